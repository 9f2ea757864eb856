"""The tokenizer of an export: load and check our tokenizer.json, write the files AutoTokenizer reads."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from perkunas_ray.chat_template import CHAT_TEMPLATE
from perkunas_ray.errors import DataError

TOKENIZER_FILE = "tokenizer.json"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
END_OF_TURN_TOKEN = "<|end|>"


@dataclasses.dataclass
class ExportTokenizer:
    """A tokenizer.json with the ids an export writes into configs (no BOS token: BOS reuses EOS, as GPT-2)."""

    path: Path
    tokenizer: Tokenizer
    data: dict[str, Any]  # the parsed tokenizer.json
    vocab_size: int  # with added tokens
    eos_token_id: int
    pad_token_id: int
    end_of_turn_id: int | None  # <|end|> closes a chat turn; generation stops there too

    @property
    def bos_token_id(self) -> int:
        return self.eos_token_id

    @property
    def special_tokens(self) -> dict[int, str]:
        """id -> content of every added token marked special, in id order."""
        found = {int(t["id"]): t["content"] for t in self.data.get("added_tokens", []) if t.get("special")}
        return dict(sorted(found.items()))

    @property
    def stop_token_ids(self) -> list[int]:
        ids = [self.eos_token_id]
        if self.end_of_turn_id is not None and self.end_of_turn_id != self.eos_token_id:
            ids.append(self.end_of_turn_id)
        return ids

    def token(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id)


def resolve_tokenizer_file(path: Path) -> Path:
    """A tokenizer.json itself or a folder holding one."""
    return path if path.suffix == ".json" and not path.is_dir() else path / TOKENIZER_FILE


def load_export_tokenizer(path: str | Path, model_vocab_size: int) -> ExportTokenizer:
    """Load a tokenizer.json; it must know EOS and fit in the model's embedding."""
    path = resolve_tokenizer_file(Path(path))
    if not path.is_file():
        raise DataError(f"tokenizer file {path} does not exist (pass --tokenizer-dir to use another one)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a bad file
        raise DataError(f"tokenizer file {path} is not a valid tokenizer.json: {exc}") from exc
    eos = tokenizer.token_to_id(EOS_TOKEN)
    if eos is None:
        raise DataError(f"tokenizer file {path} has no {EOS_TOKEN} token (the EOS every export declares)")
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab_size > model_vocab_size:
        raise DataError(f"tokenizer file {path} has {vocab_size} tokens but the model's vocab_size is "
                        f"{model_vocab_size}: it is not this model's tokenizer")
    pad = tokenizer.token_to_id(PAD_TOKEN)
    return ExportTokenizer(path=path, tokenizer=tokenizer, data=data, vocab_size=vocab_size, eos_token_id=eos,
                           pad_token_id=eos if pad is None else pad,
                           end_of_turn_id=tokenizer.token_to_id(END_OF_TURN_TOKEN))


def tokenizer_config(tok: ExportTokenizer, model_max_length: int) -> dict[str, Any]:
    """tokenizer_config.json: the fast tokenizer class, special tokens, chat template, no automatic BOS/EOS."""
    eos, pad = tok.token(tok.eos_token_id), tok.token(tok.pad_token_id)
    extra = [content for content in tok.special_tokens.values() if content not in (eos, pad)]
    added = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
                            if k in t}
             for t in tok.data.get("added_tokens", [])}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": None,
        "additional_special_tokens": extra,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "added_tokens_decoder": added,
        "chat_template": CHAT_TEMPLATE,
    }


def special_tokens_map(tok: ExportTokenizer) -> dict[str, Any]:
    config = tokenizer_config(tok, 0)
    return {key: config[key] for key in ("bos_token", "eos_token", "pad_token", "additional_special_tokens")}


def write_hf_tokenizer_files(tok: ExportTokenizer, out_dir: Path, model_max_length: int) -> list[str]:
    """tokenizer.json (copied byte for byte), tokenizer_config.json, special_tokens_map.json; returns the names."""
    shutil.copyfile(tok.path, out_dir / TOKENIZER_FILE)
    write_json(out_dir / "tokenizer_config.json", tokenizer_config(tok, model_max_length))
    write_json(out_dir / "special_tokens_map.json", special_tokens_map(tok))
    return [TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json"]


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
