"""prepare_corpus end to end: EOS placement, deterministic document split, formats, manifest and error cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from perkunas_ray.data import prepare as prepare_module
from perkunas_ray.data.manifest import load_manifest
from perkunas_ray.data.prepare import prepare_corpus
from perkunas_ray.data.sources import file_sha256
from perkunas_ray.data.split import is_validation_document
from perkunas_ray.data.tokenizer import MIN_VOCAB_SIZE, TokenizerInfo
from perkunas_ray.errors import ConfigError, DataError

pytestmark = pytest.mark.unit

BYTES_ONLY = MIN_VOCAB_SIZE  # no merges: one token per byte, so expected arrays are easy to write down


def _write_txt(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(f"{d}\n<|endoftext|>\n" for d in docs), encoding="utf-8")
    return path


def _stories(n: int) -> list[str]:
    return [f"Story {i}: a cat named Tom{'!' * (i % 5)} sat on mat {i * 7}." for i in range(n)]


def _split_stream(out: Path, split: str) -> np.ndarray:
    manifest = load_manifest(out)
    arrays = [np.load(out / s.file_name) for s in manifest.splits[split].shards]
    return np.concatenate(arrays).reshape(-1) if arrays else np.empty(0, dtype=np.int64)


def _decode_docs(tokenizer: Tokenizer, stream: np.ndarray, eos_id: int) -> list[str]:
    docs, current = [], []
    for token in stream.tolist():
        if token == eos_id:
            docs.append(tokenizer.decode(current, skip_special_tokens=False))
            current = []
        else:
            current.append(token)
    return docs  # the last, cut-off document (no EOS yet) is left out


def test_eos_after_every_document_and_exact_blocks(tmp_path: Path) -> None:
    src = _write_txt(tmp_path / "c.txt", ["ab", "c", "de"])
    summary = prepare_corpus(tmp_path / "out", src, vocab_size=BYTES_ONLY, seq_len=2, val_fraction=0.0)
    tok = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    a, b, c, d = (tok.token_to_id(ch) for ch in "abcd")
    blocks = np.load(tmp_path / "out" / "train_00000.npy")
    assert blocks.dtype == np.uint16
    np.testing.assert_array_equal(blocks, [[a, b, 0], [c, 0, d]])  # stream a b EOS c EOS d e EOS
    manifest = load_manifest(tmp_path / "out")
    assert manifest.splits["train"].num_tokens == 8 and manifest.dropped_tail_tokens == 2
    assert manifest.splits["train"].num_documents == 3 and manifest.splits["val"].num_blocks == 0
    assert (manifest.eos_id, manifest.pad_id, manifest.seq_len, manifest.dtype) == (0, 1, 2, "uint16")
    assert summary.num_blocks == {"train": 2, "val": 0} and summary.total_tokens == 8


def test_manifest_records_tokenizer_sources_and_shards(tmp_path: Path) -> None:
    src = _write_txt(tmp_path / "c.txt", _stories(60))
    out = tmp_path / "out"
    prepare_corpus(out, src, vocab_size=300, seq_len=16, blocks_per_shard=10, val_fraction=0.2)
    raw = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert raw["format"] == "perkunas_ray.token_shards" and raw["format_version"] == 1
    manifest = load_manifest(out)
    assert manifest.tokenizer_sha256 == file_sha256(out / "tokenizer.json")
    assert manifest.sources[0].sha256 == file_sha256(src) and manifest.sources[0].size_bytes == src.stat().st_size
    assert manifest.sources[0].split == "train+val"
    train = manifest.splits["train"]
    assert len(train.shards) == -(-train.num_blocks // 10) and train.shards[0].num_blocks == 10
    assert all(s.sha256 == file_sha256(out / s.file_name) for s in train.shards)
    total = sum(s.num_tokens for s in manifest.splits.values())
    packed = sum(s.num_blocks for s in manifest.splits.values()) * 17
    assert manifest.total_tokens == total and total - packed == manifest.dropped_tail_tokens
    assert manifest.special_token_ids["<|assistant|>"] == 4


def test_split_is_deterministic_by_document(tmp_path: Path) -> None:
    docs = _stories(200)
    src = _write_txt(tmp_path / "c.txt", docs)
    kwargs = {"vocab_size": BYTES_ONLY, "seq_len": 7, "val_fraction": 0.3, "seed": 7}
    prepare_corpus(tmp_path / "one", src, **kwargs)
    prepare_corpus(tmp_path / "two", src, **kwargs)
    one, two = load_manifest(tmp_path / "one"), load_manifest(tmp_path / "two")
    assert one.splits == two.splits and one.tokenizer_sha256 == two.tokenizer_sha256

    tok = Tokenizer.from_file(str(tmp_path / "one" / "tokenizer.json"))
    for split, want_val in (("train", False), ("val", True)):
        expected = [d for d in docs if is_validation_document(d, 0.3, 7) == want_val]
        got = _decode_docs(tok, _split_stream(tmp_path / "one", split), one.eos_id)
        assert got == expected[: len(got)] and len(got) >= len(expected) - 1  # every doc whole, in one split
        assert one.splits[split].num_documents == len(expected)
    assert 30 <= one.splits["val"].num_documents <= 90

    prepare_corpus(tmp_path / "three", src, **{**kwargs, "seed": 8})
    assert load_manifest(tmp_path / "three").splits["val"] != one.splits["val"]


def test_separate_validation_sources(tmp_path: Path) -> None:
    train = _write_txt(tmp_path / "train.txt", _stories(40))
    val = tmp_path / "val.jsonl"
    val.write_text("\n".join(json.dumps({"text": t}) for t in _stories(12)) + "\n", encoding="utf-8")
    prepare_corpus(tmp_path / "out", train, val_data=val, vocab_size=300, seq_len=8, val_fraction=0.5)
    manifest = load_manifest(tmp_path / "out")
    assert manifest.splits["train"].num_documents == 40 and manifest.splits["val"].num_documents == 12
    assert [(s.format, s.split) for s in manifest.sources] == [("txt", "train"), ("jsonl", "val")]


def test_folder_and_glob_of_mixed_formats(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "nested").mkdir(parents=True)
    _write_txt(corpus / "a.txt", _stories(3))
    (corpus / "b.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in _stories(2)),
                                    encoding="utf-8")
    pq.write_table(pa.table({"content": _stories(4)}), corpus / "nested" / "c.parquet", row_group_size=2)
    (corpus / "README.md").write_text("not a corpus file", encoding="utf-8")
    common = {"vocab_size": BYTES_ONLY, "seq_len": 4, "val_fraction": 0.0}
    with pytest.raises(DataError, match=r"b\.jsonl: line 1 has no field 'text' \(keys: content\)"):
        prepare_corpus(tmp_path / "x", corpus, **common)
    summary = prepare_corpus(tmp_path / "folder", corpus, text_column="content", **common)
    assert summary.num_documents == {"train": 9, "val": 0}
    summary = prepare_corpus(tmp_path / "glob", str(corpus / "**" / "*.parquet"), text_column="content", **common)
    assert summary.num_documents["train"] == 4


def test_given_tokenizer_is_copied_not_trained(tmp_path: Path) -> None:
    src = _write_txt(tmp_path / "c.txt", _stories(30))
    prepare_corpus(tmp_path / "first", src, vocab_size=300, seq_len=8)
    given = tmp_path / "first" / "tokenizer.json"
    summary = prepare_corpus(tmp_path / "second", src, tokenizer_path=tmp_path / "first", vocab_size=10**12, seq_len=8)
    assert not summary.tokenizer_trained
    manifest = load_manifest(tmp_path / "second")
    assert manifest.tokenizer_sha256 == file_sha256(given) == file_sha256(tmp_path / "second" / "tokenizer.json")
    assert manifest.settings["tokenizer_trained"] is False
    assert manifest.splits == load_manifest(tmp_path / "first").splits


def test_min_text_chars_skips_short_documents(tmp_path: Path) -> None:
    src = _write_txt(tmp_path / "c.txt", ["hi", "  ", "a longer document here", "ok!"])
    summary = prepare_corpus(tmp_path / "out", src, vocab_size=BYTES_ONLY, seq_len=4, val_fraction=0.0,
                             min_text_chars=3)
    assert summary.num_documents["train"] == 2 and summary.num_skipped_documents == 1  # blank is not counted


def test_overwrite_replaces_previous_output(tmp_path: Path) -> None:
    src = _write_txt(tmp_path / "c.txt", _stories(30))
    out = tmp_path / "out"
    prepare_corpus(out, src, vocab_size=300, seq_len=8, blocks_per_shard=5)
    assert len(list(out.glob("train_*.npy"))) > 2
    with pytest.raises(DataError, match=r"out: already holds a prepared data set.*--overwrite"):
        prepare_corpus(out, src, vocab_size=300, seq_len=8)
    prepare_corpus(out, src, vocab_size=300, seq_len=8, blocks_per_shard=10**6, overwrite=True)
    assert sorted(p.name for p in out.glob("train_*.npy")) == ["train_00000.npy"]
    assert load_manifest(out).splits["train"].shards[0].file_name == "train_00000.npy"


@pytest.mark.parametrize(("setup", "kwargs", "pattern"), [
    ("missing", {}, r"nope\.txt: no such file or folder"),
    ("empty", {}, r"blank\.txt: empty corpus"),
    ("parquet", {}, r"p\.parquet: parquet file has no column 'text'"),
    ("jsonl", {}, r"j\.jsonl: line 2 is not valid JSON"),
    ("tiny", {"seq_len": 512}, r"tiny\.txt: only \d+ train tokens, fewer than one block"),
    ("ok", {"vocab_size": 2**32 + 1}, r"vocab size 4294967297 is too large"),
])
def test_bad_input_raises_data_error(tmp_path: Path, setup: str, kwargs: dict, pattern: str) -> None:
    paths = {
        "missing": tmp_path / "nope.txt",
        "empty": tmp_path / "blank.txt",
        "parquet": tmp_path / "p.parquet",
        "jsonl": tmp_path / "j.jsonl",
        "tiny": tmp_path / "tiny.txt",
        "ok": tmp_path / "ok.txt",
    }
    paths["empty"].write_text("<|endoftext|>\n   \n<|endoftext|>\n", encoding="utf-8")
    pq.write_table(pa.table({"body": ["x"] * 5}), paths["parquet"], row_group_size=2)
    paths["jsonl"].write_text('{"text": "fine"}\n{broken\n', encoding="utf-8")
    _write_txt(paths["tiny"], ["one short doc"])
    _write_txt(paths["ok"], _stories(5))
    with pytest.raises(DataError, match=pattern):
        prepare_corpus(tmp_path / "out", paths[setup], **{"vocab_size": 300, **kwargs})
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_given_tokenizer_too_large_for_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _write_txt(tmp_path / "c.txt", _stories(10))
    prepare_corpus(tmp_path / "first", src, vocab_size=300, seq_len=8)
    huge = TokenizerInfo(vocab_size=2**32 + 10, eos_id=0, pad_id=1, special_token_ids={})
    monkeypatch.setattr(prepare_module, "describe_tokenizer", lambda tokenizer, where: huge)
    with pytest.raises(DataError, match=r"first[/\\]tokenizer\.json: vocab size 4294967306 is too large"):
        prepare_corpus(tmp_path / "second", src, tokenizer_path=tmp_path / "first" / "tokenizer.json")


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"seq_len": 0}, r"prepare\.seq_len must be a positive integer, got 0"),
    ({"val_fraction": 1.0}, r"prepare\.val_fraction must be in \[0, 1\)"),
    ({"blocks_per_shard": -1}, r"prepare\.blocks_per_shard"),
    ({"min_text_chars": -1}, r"prepare\.min_text_chars"),
    ({"seed": -3}, r"prepare\.seed"),
    ({"vocab_size": 10}, r"vocab_size must be an integer >= 262"),
    ({"no_such_option": 1}, r"prepare_corpus: .*no_such_option"),
])
def test_bad_options_raise_config_error(tmp_path: Path, kwargs: dict, pattern: str) -> None:
    src = _write_txt(tmp_path / "c.txt", _stories(5))
    with pytest.raises(ConfigError, match=pattern):
        prepare_corpus(tmp_path / "out", src, **kwargs)


def test_list_of_sources_keeps_order_and_drops_repeats(tmp_path: Path) -> None:
    a = _write_txt(tmp_path / "a.txt", _stories(3))
    b = _write_txt(tmp_path / "b.txt", _stories(5))
    summary = prepare_corpus(tmp_path / "out", [b, str(tmp_path / "*.txt")], vocab_size=BYTES_ONLY, seq_len=4,
                             val_fraction=0.0)
    assert summary.num_documents["train"] == 8
    assert [Path(s.path).name for s in load_manifest(tmp_path / "out").sources] == ["b.txt", "a.txt"]
    assert a.exists()
