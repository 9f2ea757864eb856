"""Write packed blocks to numbered .npy shards of a fixed block count, checksumming each one."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from perkunas_ray.data.manifest import ShardInfo
from perkunas_ray.errors import ConfigError


def shard_file_name(split: str, index: int) -> str:
    """`train_00000.npy`, `val_00003.npy`, ..."""
    return f"{split}_{index:05d}.npy"


def _save_npy(path: Path, blocks: np.ndarray) -> str:
    """np.save to a temp file, rename into place; return the sha256 of the bytes written."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, blocks, allow_pickle=False)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, path)
    return digest


class TokenShardWriter:
    """Collects blocks of one split and flushes a shard every `blocks_per_shard` blocks."""

    def __init__(self, output_dir: str | Path, split: str, block_len: int, dtype: np.dtype | type,
                 blocks_per_shard: int) -> None:
        if isinstance(blocks_per_shard, bool) or not isinstance(blocks_per_shard, int) or blocks_per_shard <= 0:
            raise ConfigError(f"blocks_per_shard must be a positive integer, got {blocks_per_shard!r}")
        self.output_dir = Path(output_dir)
        self.split = split
        self.block_len = block_len
        self.dtype = np.dtype(dtype)
        self.blocks_per_shard = blocks_per_shard
        self.shards: list[ShardInfo] = []
        self._pending: list[np.ndarray] = []
        self._num_pending = 0

    @property
    def num_blocks(self) -> int:
        """Blocks written so far plus those waiting for the next shard."""
        return sum(s.num_blocks for s in self.shards) + self._num_pending

    def add(self, blocks: np.ndarray) -> None:
        """Queue blocks of shape (n, block_len); full shards are written at once."""
        if blocks.ndim != 2 or blocks.shape[1] != self.block_len:
            raise ValueError(f"blocks must have shape (n, {self.block_len}), got {blocks.shape}")
        if len(blocks) == 0:
            return
        self._pending.append(blocks.astype(self.dtype, copy=False))
        self._num_pending += len(blocks)
        while self._num_pending >= self.blocks_per_shard:
            queued = np.concatenate(self._pending)
            self._write(queued[: self.blocks_per_shard])
            rest = queued[self.blocks_per_shard:]
            self._pending = [rest] if len(rest) else []
            self._num_pending = len(rest)

    def finish(self) -> list[ShardInfo]:
        """Write the last, possibly short, shard and return every shard written."""
        if self._num_pending:
            self._write(np.concatenate(self._pending))
        self._pending, self._num_pending = [], 0
        return list(self.shards)

    def _write(self, blocks: np.ndarray) -> None:
        name = shard_file_name(self.split, len(self.shards))
        digest = _save_npy(self.output_dir / name, np.ascontiguousarray(blocks))
        self.shards.append(ShardInfo(file_name=name, num_blocks=len(blocks), sha256=digest))
