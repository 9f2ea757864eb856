"""Block packing (exact boundaries, dropped tail), dtype choice and shard writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perkunas_ray.data.dtypes import choose_token_dtype
from perkunas_ray.data.packing import BlockPacker, pack_blocks
from perkunas_ray.data.shards import TokenShardWriter, shard_file_name
from perkunas_ray.data.sources import file_sha256
from perkunas_ray.errors import ConfigError, DataError

pytestmark = pytest.mark.unit


def test_pack_blocks_exact() -> None:
    blocks, dropped = pack_blocks(np.arange(1, 11), seq_len=2)
    np.testing.assert_array_equal(blocks, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert dropped == 1
    blocks, dropped = pack_blocks(np.arange(6), seq_len=2)
    np.testing.assert_array_equal(blocks, [[0, 1, 2], [3, 4, 5]])
    assert dropped == 0
    blocks, dropped = pack_blocks(np.arange(2), seq_len=4)
    assert blocks.shape == (0, 5) and dropped == 2


def test_pack_blocks_rejects_bad_seq_len() -> None:
    with pytest.raises(ConfigError, match="seq_len must be a positive integer, got 0"):
        pack_blocks(np.arange(4), seq_len=0)


def test_streaming_packer_matches_pack_blocks() -> None:
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 1000, size=1003)
    cuts = np.sort(rng.choice(np.arange(1, len(stream)), size=40, replace=False))
    packer = BlockPacker(seq_len=6, dtype=np.uint16)
    got = [packer.add(chunk) for chunk in np.split(stream, cuts)]
    dropped = packer.finish()
    expected, expected_dropped = pack_blocks(stream, seq_len=6)
    np.testing.assert_array_equal(np.concatenate(got), expected)
    assert dropped == expected_dropped == 1003 % 7
    assert packer.num_tokens_in == 1003 and np.concatenate(got).dtype == np.uint16


@pytest.mark.parametrize(("vocab_size", "dtype"), [
    (1, np.uint16), (8192, np.uint16), (65535, np.uint16), (65536, np.uint16),
    (65537, np.uint32), (200_000, np.uint32), (2**32, np.uint32),
])
def test_choose_token_dtype(vocab_size: int, dtype: type) -> None:
    assert choose_token_dtype(vocab_size) == np.dtype(dtype)


@pytest.mark.parametrize("vocab_size", [2**32 + 1, 0, -5])
def test_choose_token_dtype_rejects(vocab_size: int) -> None:
    with pytest.raises(DataError, match="vocab size"):
        choose_token_dtype(vocab_size)


def test_shard_writer_splits_by_block_count(tmp_path: Path) -> None:
    writer = TokenShardWriter(tmp_path, "train", block_len=3, dtype=np.uint16, blocks_per_shard=2)
    blocks = np.arange(15).reshape(5, 3)
    writer.add(blocks[:1])
    writer.add(blocks[1:4])
    writer.add(blocks[4:])
    shards = writer.finish()
    assert [(s.file_name, s.num_blocks) for s in shards] == [
        ("train_00000.npy", 2), ("train_00001.npy", 2), ("train_00002.npy", 1)]
    loaded = [np.load(tmp_path / s.file_name) for s in shards]
    assert all(a.dtype == np.uint16 for a in loaded)
    np.testing.assert_array_equal(np.concatenate(loaded), blocks)
    assert all(s.sha256 == file_sha256(tmp_path / s.file_name) for s in shards)
    assert not list(tmp_path.glob("*.tmp"))
    assert shard_file_name("val", 12) == "val_00012.npy"
    with pytest.raises(ConfigError, match="blocks_per_shard"):
        TokenShardWriter(tmp_path, "train", block_len=3, dtype=np.uint16, blocks_per_shard=0)
