"""Pack a stream of token ids into fixed, non-overlapping blocks of seq_len + 1 tokens."""

from __future__ import annotations

import numpy as np

from perkunas_ray.errors import ConfigError


def pack_blocks(token_ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, int]:
    """Block k is token_ids[k*(seq_len+1):(k+1)*(seq_len+1)]; return (blocks, number of dropped tail tokens)."""
    block_len = _block_len(seq_len)
    token_ids = np.asarray(token_ids)
    num_blocks = len(token_ids) // block_len
    blocks = token_ids[: num_blocks * block_len].reshape(num_blocks, block_len)
    return blocks, len(token_ids) - num_blocks * block_len


def _block_len(seq_len: int) -> int:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise ConfigError(f"seq_len must be a positive integer, got {seq_len!r}")
    return seq_len + 1


class BlockPacker:
    """Streaming form of pack_blocks: feed token arrays, take out whole blocks; the tail waits for more."""

    def __init__(self, seq_len: int, dtype: np.dtype | type = np.uint32) -> None:
        self.block_len = _block_len(seq_len)
        self.dtype = np.dtype(dtype)
        self._pending: list[np.ndarray] = []
        self._num_pending = 0
        self.num_tokens_in = 0

    def add(self, token_ids: np.ndarray) -> np.ndarray:
        """Feed tokens; return every block completed by them, shape (n, seq_len + 1), maybe n = 0."""
        token_ids = np.asarray(token_ids, dtype=self.dtype)
        self.num_tokens_in += len(token_ids)
        self._pending.append(token_ids)
        self._num_pending += len(token_ids)
        if self._num_pending < self.block_len:
            return np.empty((0, self.block_len), dtype=self.dtype)
        stream = np.concatenate(self._pending)
        blocks, num_tail = pack_blocks(stream, self.block_len - 1)
        tail = stream[len(stream) - num_tail:]
        self._pending = [tail.copy()] if num_tail else []
        self._num_pending = num_tail
        return blocks

    def finish(self) -> int:
        """End the stream: return the number of tail tokens that do not fill a block (they are dropped)."""
        dropped = self._num_pending
        self._pending = []
        return dropped
