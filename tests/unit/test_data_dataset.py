"""PackedTokenDataset (mmap, checksum and shape checks), load_manifest validation, BatchCursor and eval batches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from perkunas_ray.data.cursor import BatchCursor, iter_eval_batches
from perkunas_ray.data.dataset import PackedTokenDataset
from perkunas_ray.data.manifest import load_manifest
from perkunas_ray.data.prepare import prepare_corpus
from perkunas_ray.data.sources import file_sha256
from perkunas_ray.errors import ConfigError, DataError

pytestmark = pytest.mark.unit

SEQ_LEN = 8


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    docs = [f"Tale {i}: the dog {'ran ' * (i % 4)}home on day {i}." for i in range(80)]
    (root / "c.txt").write_text("".join(f"{d}\n<|endoftext|>\n" for d in docs), encoding="utf-8")
    prepare_corpus(root / "data", root / "c.txt", vocab_size=300, seq_len=SEQ_LEN, blocks_per_shard=16,
                   val_fraction=0.2)
    return root / "data"


@pytest.fixture
def data_copy(prepared: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(prepared, tmp_path / "data"))


def test_dataset_exposes_blocks_across_shards(prepared: Path) -> None:
    ds = PackedTokenDataset(prepared, "train")
    manifest = load_manifest(prepared)
    assert ds.manifest == manifest and len(manifest.splits["train"].shards) > 1
    assert (ds.seq_len, ds.vocab_size, len(ds)) == (SEQ_LEN, manifest.vocab_size, manifest.splits["train"].num_blocks)
    assert ds.num_blocks == len(ds) and ds.tokenizer_path == prepared / "tokenizer.json"
    everything = np.concatenate([np.load(prepared / s.file_name) for s in manifest.splits["train"].shards])
    for i in (0, 15, 16, 17, len(ds) - 1):
        block = ds.block(i)
        assert block.shape == (SEQ_LEN + 1,) and block.dtype == np.uint16
        np.testing.assert_array_equal(block, everything[i])
    with pytest.raises(IndexError):
        ds.block(len(ds))
    batch = ds.blocks([3, 0, 3])
    assert batch.dtype == np.int64 and batch.shape == (3, SEQ_LEN + 1)
    np.testing.assert_array_equal(batch, everything[[3, 0, 3]])
    assert len(PackedTokenDataset(prepared, "val")) == load_manifest(prepared).splits["val"].num_blocks
    with pytest.raises(ConfigError, match="split must be one of train, val"):
        PackedTokenDataset(prepared, "test")


def test_flipped_byte_fails_checksum_naming_the_file(data_copy: Path) -> None:
    shard = data_copy / "train_00001.npy"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0x01
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train_00001\.npy: sha256 mismatch, manifest expects [0-9a-f]{64}, file has"):
        PackedTokenDataset(data_copy, "train")
    assert len(PackedTokenDataset(data_copy, "train", verify=False)) > 0  # shape still fine, check skipped


def test_shape_mismatch_names_the_file(data_copy: Path) -> None:
    shard = data_copy / "train_00000.npy"
    np.save(shard, np.zeros((16, SEQ_LEN), dtype=np.uint16))  # one column short
    manifest = json.loads((data_copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["splits"]["train"]["shards"][0]["sha256"] = file_sha256(shard)  # checksum agrees, shape does not
    (data_copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(DataError, match=rf"train_00000\.npy: shape mismatch, manifest expects \(16, {SEQ_LEN + 1}\), "
                                        rf"file has \(16, {SEQ_LEN}\)"):
        PackedTokenDataset(data_copy, "train")


def test_missing_shard_and_missing_manifest(data_copy: Path, tmp_path: Path) -> None:
    (data_copy / "val_00000.npy").unlink()
    with pytest.raises(DataError, match=r"val_00000\.npy: shard listed in the manifest is missing"):
        PackedTokenDataset(data_copy, "val")
    with pytest.raises(DataError, match=r"manifest\.json: no data manifest here"):
        load_manifest(tmp_path / "empty")


@pytest.mark.parametrize(("edit", "pattern"), [
    (lambda m: m.update(format_version=99), r"format_version 99 is not supported"),
    (lambda m: m.update(format="other"), r"format is 'other'"),
    (lambda m: m.pop("seq_len"), r"missing field 'seq_len'"),
    (lambda m: m.update(dtype="float32"), r"dtype 'float32' is not one of uint16, uint32"),
    (lambda m: m.update(vocab_size=70000), r"vocab_size 70000 does not fit dtype uint16"),
    (lambda m: m["splits"]["train"].update(num_blocks=1), r"splits\.train: num_blocks is 1 but its shards hold"),
    (lambda m: m["splits"]["train"]["shards"][0].update(file_name="../x.npy"), r"must be a plain file name"),
    (lambda m: m.update(eos_id="0"), r"field 'eos_id' must be int"),
])
def test_load_manifest_validates(data_copy: Path, edit, pattern: str) -> None:  # type: ignore[no-untyped-def]
    path = data_copy / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(DataError, match=r"manifest\.json.*" + pattern):
        load_manifest(data_copy)


def test_cursor_resume_gives_the_same_batches(prepared: Path) -> None:
    ds = PackedTokenDataset(prepared, "train")
    cursor = BatchCursor(ds, micro_batch_size=4, shuffle=True, seed=11)
    first = [cursor.next_batch() for _ in range(5)]
    state = json.loads(json.dumps(cursor.state_dict()))
    expected = [cursor.next_batch() for _ in range(3)]
    resumed = BatchCursor(ds, micro_batch_size=4, shuffle=True, seed=0)
    resumed.load_state_dict(state)
    for want, got in zip(expected, [resumed.next_batch() for _ in range(3)], strict=True):
        assert got.dtype == np.int64 and got.shape == (4, SEQ_LEN + 1)
        np.testing.assert_array_equal(got, want)
    again = BatchCursor(ds, micro_batch_size=4, shuffle=True, seed=11)
    for want in first:
        np.testing.assert_array_equal(again.next_batch(), want)


def test_cursor_epochs_are_fresh_permutations(prepared: Path) -> None:
    ds = PackedTokenDataset(prepared, "train")
    n = len(ds)
    cursor = BatchCursor(ds, micro_batch_size=n, shuffle=True, seed=3)
    epoch0, epoch1 = cursor.next_indices(), cursor.next_indices()
    assert sorted(epoch0) == sorted(epoch1) == list(range(n)) and not np.array_equal(epoch0, epoch1)
    assert cursor.state_dict() == {"epoch": 2, "position": 0, "seed": 3, "shuffle": True, "num_blocks": n}
    straddle = BatchCursor(ds, micro_batch_size=n - 1, shuffle=False)
    straddle.next_indices()
    np.testing.assert_array_equal(straddle.next_indices()[:2], [n - 1, 0])  # runs on into the next epoch


def test_cursor_rejects_bad_state_and_options(prepared: Path) -> None:
    ds = PackedTokenDataset(prepared, "train")
    cursor = BatchCursor(ds, micro_batch_size=2, shuffle=False)
    with pytest.raises(DataError, match="taken on 3 train blocks"):
        cursor.load_state_dict({**cursor.state_dict(), "num_blocks": 3})
    with pytest.raises(DataError, match="'epoch' must be a non-negative integer"):
        cursor.load_state_dict({**cursor.state_dict(), "epoch": -1})
    with pytest.raises(ConfigError, match="micro_batch_size must be a positive integer, got 0"):
        BatchCursor(ds, micro_batch_size=0)


def test_eval_batches_in_order_drop_partial(prepared: Path) -> None:
    ds = PackedTokenDataset(prepared, "train")
    batches = list(iter_eval_batches(ds, micro_batch_size=5))
    assert len(batches) == len(ds) // 5
    np.testing.assert_array_equal(np.concatenate(batches), ds.blocks(range(len(batches) * 5)))
    assert len(list(iter_eval_batches(ds, micro_batch_size=5, max_batches=2))) == 2
    assert list(iter_eval_batches(ds, micro_batch_size=len(ds) + 1)) == []
