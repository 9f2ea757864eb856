"""Our byte-level BPE tokenizer as GGUF metadata: tokenizer model `gpt2`, tokens, token types, merges.

Follows llama.cpp's convert_hf_to_gguf (`_set_vocab_gpt2`): tokens are the byte-level vocab strings,
special added tokens are CONTROL, other added tokens USER_DEFINED, ids the tokenizer lacks `[PAD<id>]`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gguf

from perkunas_ray.export.errors import ExportError
from perkunas_ray.export.tokenizer_files import ExportTokenizer

# llama.cpp's name for the GPT-2 pre-tokenizer regex, which tokenizers' ByteLevel(use_regex=True) applies.
GGUF_PRE_TOKENIZER = "gpt-2"


@dataclasses.dataclass
class GGUFVocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]  # "left right", rank order


def _check_byte_level_bpe(tok: ExportTokenizer) -> None:
    """llama.cpp re-implements the tokenizer from metadata; refuse a pipeline its `gpt-2` BPE would not match."""
    data, where = tok.data, tok.path
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(f"GGUF export needs a BPE tokenizer; {where} has model type {model.get('type')!r}")
    if data.get("normalizer") is not None:
        raise ExportError(f"GGUF export needs a tokenizer without a normalizer; {where} has "
                          f"{data['normalizer'].get('type')!r}")
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        raise ExportError(f"GGUF export needs the byte-level pre-tokenizer with the GPT-2 regex and no prefix "
                          f"space (as `perkunas prepare` trains); {where} has {pre!r}")


def _merge_text(merge: Any) -> str:
    return merge if isinstance(merge, str) else " ".join(merge)


def gguf_vocab(tok: ExportTokenizer, vocab_size: int) -> GGUFVocab:
    """Token list padded to the model's vocab_size, token types and merges of a byte-level BPE tokenizer."""
    _check_byte_level_bpe(tok)
    by_id = {i: t for t, i in tok.tokenizer.get_vocab(with_added_tokens=True).items()}
    added = {int(t["id"]): bool(t.get("special")) for t in tok.data.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.USER_DEFINED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [_merge_text(m) for m in tok.data["model"].get("merges", [])]
    return GGUFVocab(tokens=tokens, token_types=[int(t) for t in types], merges=merges)


def add_vocab(writer: gguf.GGUFWriter, tok: ExportTokenizer, vocab_size: int, chat_template: str) -> GGUFVocab:
    """Write tokenizer metadata: no automatic BOS/EOS (our tokenizer adds none), stop at EOS and end of turn."""
    vocab = gguf_vocab(tok, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(GGUF_PRE_TOKENIZER)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    if tok.end_of_turn_id is not None:
        writer.add_eot_token_id(tok.end_of_turn_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat_template)
    return vocab
