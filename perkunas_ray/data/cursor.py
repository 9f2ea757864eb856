"""Deterministic, resumable batch order over a PackedTokenDataset, and in-order evaluation batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from perkunas_ray.data.dataset import PackedTokenDataset
from perkunas_ray.errors import ConfigError, DataError


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def epoch_order(num_blocks: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """Block order of one epoch: a permutation from default_rng([seed, epoch]), or 0..n-1 unshuffled."""
    if not shuffle:
        return np.arange(num_blocks, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_blocks).astype(np.int64)


class BatchCursor:
    """Endless batches; a batch that runs past an epoch's end continues in the next epoch's order."""

    def __init__(self, dataset: PackedTokenDataset, micro_batch_size: int, shuffle: bool = True,
                 seed: int = 0) -> None:
        _check_positive("micro_batch_size", micro_batch_size)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        if len(dataset) == 0:
            raise DataError(f"{dataset.data_dir}: the {dataset.split!r} split has no blocks to batch")
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.epoch = 0
        self.position = 0  # index into the current epoch's order of the next block to hand out
        self._order: np.ndarray | None = None

    def _current_order(self) -> np.ndarray:
        if self._order is None:
            self._order = epoch_order(len(self.dataset), self.epoch, self.seed, self.shuffle)
        return self._order

    def next_indices(self) -> np.ndarray:
        """The block indices of the next batch (advances the cursor)."""
        picked: list[np.ndarray] = []
        needed = self.micro_batch_size
        while needed:
            order = self._current_order()
            take = order[self.position: self.position + needed]
            picked.append(take)
            needed -= len(take)
            self.position += len(take)
            if self.position == len(order):
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return np.concatenate(picked)

    def next_batch(self) -> np.ndarray:
        """int64 array of shape (micro_batch_size, seq_len + 1)."""
        return self.dataset.blocks(self.next_indices())

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position; load_state_dict of it resumes with exactly the same batches."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                "num_blocks": len(self.dataset)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from state_dict(); DataError if it was taken on a dataset of another size."""
        if not isinstance(state, dict):
            raise DataError(f"batch cursor state must be a dict, got {type(state).__name__}")
        for key in ("epoch", "position", "seed"):
            value = state.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DataError(f"batch cursor state {key!r} must be a non-negative integer, got {value!r}")
        if not isinstance(state.get("shuffle"), bool):
            raise DataError(f"batch cursor state 'shuffle' must be a bool, got {state.get('shuffle')!r}")
        num_blocks = state.get("num_blocks", len(self.dataset))
        if num_blocks != len(self.dataset):
            raise DataError(f"batch cursor state was taken on {num_blocks} {self.dataset.split} blocks, but "
                            f"{self.dataset.data_dir} has {len(self.dataset)}; the data changed since")
        if state["position"] >= len(self.dataset):
            raise DataError(f"batch cursor state position {state['position']} is past the {len(self.dataset)} blocks")
        self.epoch, self.position = state["epoch"], state["position"]
        self.seed, self.shuffle = state["seed"], state["shuffle"]
        self._order = None


def iter_eval_batches(dataset: PackedTokenDataset, micro_batch_size: int,
                      max_batches: int | None = None) -> Iterator[np.ndarray]:
    """In-order int64 batches for validation; the last partial batch is dropped."""
    _check_positive("micro_batch_size", micro_batch_size)
    num_batches = len(dataset) // micro_batch_size
    if max_batches is not None:
        if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 0:
            raise ConfigError(f"max_batches must be a non-negative integer or None, got {max_batches!r}")
        num_batches = min(num_batches, max_batches)
    for batch_index in range(num_batches):
        start = batch_index * micro_batch_size
        yield dataset.blocks(range(start, start + micro_batch_size))
