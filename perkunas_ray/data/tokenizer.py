"""Train a byte-level BPE tokenizer with fixed special-token ids, or load and check a given one."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from perkunas_ray.errors import ConfigError, DataError

TOKENIZER_FILE_NAME = "tokenizer.json"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
END_TOKEN = "<|end|>"
# Order is the contract: a trained tokenizer gives these ids 0, 1, 2, ... in this order.
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, PAD_TOKEN, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN)
EOS_TOKEN_ID = SPECIAL_TOKENS.index(EOS_TOKEN)
NUM_BYTE_TOKENS = 256
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + NUM_BYTE_TOKENS
DEFAULT_VOCAB_SIZE = 8192


@dataclass(frozen=True)
class TokenizerInfo:
    """What the packer and the manifest need from a tokenizer."""

    vocab_size: int
    eos_id: int
    pad_id: int | None
    special_token_ids: dict[str, int]


def new_byte_level_bpe() -> Tokenizer:
    """An untrained byte-level BPE whose decode(encode(text)) == text (no prefix space, no normalizer)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, *, min_frequency: int = 2,
                    show_progress: bool = False) -> Tokenizer:
    """Train a byte-level BPE on `texts`; SPECIAL_TOKENS get ids 0..len-1, then the 256 byte tokens."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(f"vocab_size must be an integer >= {MIN_VOCAB_SIZE} "
                          f"({len(SPECIAL_TOKENS)} special + {NUM_BYTE_TOKENS} byte tokens), got {vocab_size}")
    tokenizer = new_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        got = tokenizer.token_to_id(token)
        if got != expected_id:  # would break every caller that relies on EOS=0, PAD=1
            raise DataError(f"trained tokenizer gave {token} id {got}, expected {expected_id}")
    return tokenizer


def eos_token_id(tokenizer: Tokenizer) -> int:
    """The tokenizer's id of EOS_TOKEN; EOS_TOKEN_ID for one that lacks it (a foreign Hugging Face package)."""
    eos = tokenizer.token_to_id(EOS_TOKEN)
    return EOS_TOKEN_ID if eos is None else eos


def resolve_tokenizer_file(path: str | Path) -> Path:
    """Accept a tokenizer.json file or a folder holding one; return the file."""
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        candidate = candidate / TOKENIZER_FILE_NAME
    if not candidate.is_file():
        raise DataError(f"{candidate}: tokenizer file not found (give a tokenizer.json or a folder holding one)")
    return candidate


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json (file or folder), raising DataError naming the file if it does not parse."""
    file = resolve_tokenizer_file(path)
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise DataError(f"{file}: not a valid tokenizer.json ({exc})") from exc


def describe_tokenizer(tokenizer: Tokenizer, source: str | Path = "tokenizer") -> TokenizerInfo:
    """Vocab size and special ids; the tokenizer must know EOS_TOKEN (it ends every document)."""
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    if eos_id is None:
        raise DataError(f"{source}: tokenizer has no {EOS_TOKEN} token, needed to end documents")
    special = {t: i for t in SPECIAL_TOKENS if (i := tokenizer.token_to_id(t)) is not None}
    return TokenizerInfo(
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        eos_id=eos_id,
        pad_id=tokenizer.token_to_id(PAD_TOKEN),
        special_token_ids=special,
    )
