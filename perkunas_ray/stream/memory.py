"""Tracked bytes of what the compute side holds (shards, grads, boundaries, saved activations) and its peak."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def dict_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(tensor_bytes(t) for t in tensors.values())


class MemoryTracker:
    """A byte counter by kind with a running peak; on CUDA the allocator's own peak is reported too.

    Saved activations are counted through `saved_tensors_hooks` while a replay builds its graph;
    tensors already counted (shard parameters, boundaries) are recognised by storage pointer.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.current = 0
        self.peak = 0
        self.by_kind: dict[str, int] = {}
        self._lock = threading.Lock()
        self._known: set[int] = set()

    def add(self, kind: str, nbytes: int) -> None:
        with self._lock:
            self.current += nbytes
            self.by_kind[kind] = self.by_kind.get(kind, 0) + nbytes
            self.peak = max(self.peak, self.current)

    def sub(self, kind: str, nbytes: int) -> None:
        self.add(kind, -nbytes)

    def remember(self, tensors: dict[str, torch.Tensor] | list[torch.Tensor]) -> None:
        values = tensors.values() if isinstance(tensors, dict) else tensors
        for t in values:
            self._known.add(t.untyped_storage().data_ptr())

    def forget(self, tensors: dict[str, torch.Tensor] | list[torch.Tensor]) -> None:
        values = tensors.values() if isinstance(tensors, dict) else tensors
        for t in values:
            self._known.discard(t.untyped_storage().data_ptr())

    def reset_peak(self) -> None:
        with self._lock:
            self.peak = self.current
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def live_bytes(self) -> int:
        """What is held now: the allocator's figure on CUDA (it sees workspaces too), tracked bytes elsewhere."""
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return self.current

    def device_peak(self) -> int:
        """The figure to hold against the budget: allocator peak on CUDA, tracked peak elsewhere."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return self.peak

    @contextlib.contextmanager
    def saved_activations(self) -> Iterator[list[int]]:
        """Count the tensors autograd saves inside the block; the caller releases them with `release`."""
        counted: list[int] = []
        seen: set[int] = set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self._known and ptr not in seen and t.device == self.device:
                seen.add(ptr)
                nbytes = t.untyped_storage().nbytes()
                counted.append(nbytes)
                self.add("activations", nbytes)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield counted

    def release(self, counted: list[int]) -> None:
        self.sub("activations", sum(counted))
        counted.clear()
