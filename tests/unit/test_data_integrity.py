"""A data dir is trusted only as far as it checks out: names stay inside it, the tokenizer is the hashed one,
bad text is named by line, and --overwrite never loses the old data set to a failed new one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from perkunas_ray.data import prepare as prepare_module
from perkunas_ray.data.dataset import PackedTokenDataset
from perkunas_ray.data.manifest import load_manifest
from perkunas_ray.data.prepare import prepare_corpus
from perkunas_ray.errors import DataError

pytestmark = pytest.mark.unit


def _corpus(path: Path, n: int = 40, word: str = "cat") -> Path:
    path.write_text("".join(f"Story {i}: a {word} sat on mat {i * 7}.\n<|endoftext|>\n" for i in range(n)),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    prepare_corpus(root / "data", _corpus(root / "c.txt"), vocab_size=300, seq_len=8, val_fraction=0.2)
    return root / "data"


@pytest.fixture
def data_copy(prepared: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(prepared, tmp_path / "data"))


def _edit_manifest(data_dir: Path, **fields: object) -> None:
    path = data_dir / "manifest.json"
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("name", ["/etc/passwd", "../tokenizer.json", "sub/tokenizer.json", ".."])
def test_a_tokenizer_file_outside_the_data_dir_is_refused(data_copy: Path, name: str) -> None:
    _edit_manifest(data_copy, tokenizer_file=name)
    with pytest.raises(DataError, match=rf"manifest.json: tokenizer_file must be a plain file name .*{name!r}"):
        load_manifest(data_copy)


def test_a_changed_tokenizer_fails_its_checksum_when_the_data_dir_is_opened(data_copy: Path) -> None:
    tokenizer = data_copy / "tokenizer.json"
    data = json.loads(tokenizer.read_text())
    data["added_tokens"][0]["content"] = "<|other|>"
    tokenizer.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"tokenizer.json: sha256 mismatch, manifest expects"):
        PackedTokenDataset(data_copy, "train")
    assert len(PackedTokenDataset(data_copy, "train", verify=False)) > 0


def test_a_lone_surrogate_in_jsonl_is_a_data_error_naming_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "c.jsonl"
    src.write_text('{"text": "a fine first story"}\n{"text": "bad \\ud800 text"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.jsonl: line 2 field 'text' holds a lone surrogate"):
        prepare_corpus(tmp_path / "out", src, vocab_size=300, seq_len=4)


def test_a_surrogate_pair_escape_is_fine(tmp_path: Path) -> None:
    src = tmp_path / "c.jsonl"
    src.write_text("".join(f'{{"text": "story {i} \\ud83d\\ude00 ends"}}\n' for i in range(20)), encoding="utf-8")
    summary = prepare_corpus(tmp_path / "out", src, vocab_size=300, seq_len=4, val_fraction=0.0)
    assert summary.num_documents["train"] == 20


def test_a_failed_overwrite_keeps_the_old_data_set(prepared: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = Path(shutil.copytree(prepared, tmp_path / "data"))
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(prepare_module, "write_manifest", disk_full)
    with pytest.raises(OSError, match="disk full"):
        prepare_corpus(out, _corpus(tmp_path / "new.txt", word="dog"), vocab_size=300, seq_len=8, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "new.txt"]  # no temp dir left behind
    assert len(PackedTokenDataset(out, "train")) > 0


def test_overwrite_swaps_in_the_new_set_and_keeps_other_files(prepared: Path, tmp_path: Path) -> None:
    out = Path(shutil.copytree(prepared, tmp_path / "data"))
    (out / "notes.txt").write_text("mine")
    old_shards = {s.file_name for s in load_manifest(out).splits["train"].shards}
    prepare_corpus(out, _corpus(tmp_path / "new.txt", n=200, word="dog"), vocab_size=300, seq_len=8,
                   blocks_per_shard=10**6, overwrite=True, tokenizer_path=out)
    manifest = load_manifest(out)
    new_shards = {s.file_name for s in manifest.splits["train"].shards}
    assert new_shards == {"train_00000.npy"} and old_shards
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(
        new_shards | {s.file_name for s in manifest.splits["val"].shards})
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "new.txt"]
    assert len(PackedTokenDataset(out, "train")) == manifest.splits["train"].num_blocks
