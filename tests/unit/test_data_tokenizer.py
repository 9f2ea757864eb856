"""Byte-level BPE training: special-token ids, lossless round trip, loading and transformers compatibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models

from perkunas_ray.data.tokenizer import (
    EOS_TOKEN,
    MIN_VOCAB_SIZE,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    describe_tokenizer,
    load_tokenizer,
    train_tokenizer,
)
from perkunas_ray.errors import ConfigError, DataError

pytestmark = pytest.mark.unit

CORPUS = [
    "Once upon a time, a little girl named Lily lived in a small house.",
    "She liked to play with her ball.\nOne day the ball rolled away!",
    "Café, naïve, 日本語, emoji 🙂 and tabs\tand  double  spaces.",
] * 20

ROUND_TRIP = [
    "Once upon a time, Lily played.",
    " leading space and trailing space ",
    "line one\nline two\r\n\n\nthree\ttab",
    "Ünïcödé: 日本語テキスト, Ελληνικά, emoji 🙂👍🏽, combining e\u0301",
    "   ",
    "",
    "special inside <|endoftext|> text <|user|>hi<|end|>",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer(iter(CORPUS), vocab_size=400)


def test_special_tokens_get_first_ids(tokenizer: Tokenizer) -> None:
    assert SPECIAL_TOKENS == ("<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    info = describe_tokenizer(tokenizer)
    assert (info.eos_id, info.pad_id) == (0, 1)
    assert info.special_token_ids[EOS_TOKEN] == 0 and info.special_token_ids[PAD_TOKEN] == 1
    assert MIN_VOCAB_SIZE < info.vocab_size <= 400


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_is_lossless(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_special_token_text_encodes_to_its_id(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("a<|endoftext|>b", add_special_tokens=False).ids
    assert 0 in ids


def test_vocab_size_bounds() -> None:
    with pytest.raises(ConfigError, match=f"vocab_size must be an integer >= {MIN_VOCAB_SIZE}"):
        train_tokenizer(iter(CORPUS), vocab_size=100)
    tiny = train_tokenizer(iter(CORPUS), vocab_size=MIN_VOCAB_SIZE)  # bytes only, no merges
    assert tiny.get_vocab_size() == MIN_VOCAB_SIZE


def test_save_and_load_file_or_folder(tokenizer: Tokenizer, tmp_path: Path) -> None:
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    for path in (tmp_path / "tokenizer.json", tmp_path):
        loaded = load_tokenizer(path)
        assert loaded.encode(CORPUS[2]).ids == tokenizer.encode(CORPUS[2]).ids
    with pytest.raises(DataError, match=r"nowhere: tokenizer file not found"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad[/\\]tokenizer\.json: not a valid tokenizer\.json"):
        load_tokenizer(tmp_path / "bad")


def test_tokenizer_without_eos_is_rejected() -> None:
    bare = Tokenizer(models.BPE())
    with pytest.raises(DataError, match="given.json: tokenizer has no <\\|endoftext\\|> token"):
        describe_tokenizer(bare, "given.json")


def test_transformers_fast_tokenizer_loads_it(tokenizer: Tokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    assert json.loads(path.read_text(encoding="utf-8"))["pre_tokenizer"]["add_prefix_space"] is False
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    assert (hf.eos_token_id, hf.pad_token_id) == (0, 1)
    text = ROUND_TRIP[3] + "\n" + ROUND_TRIP[2]
    ids = hf.encode(text, add_special_tokens=False)
    assert ids == tokenizer.encode(text, add_special_tokens=False).ids
    assert hf.decode(ids) == text
