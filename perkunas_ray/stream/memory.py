"""Tracked bytes of what the compute side holds (shards, grads, boundaries, saved activations) and its peak."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator

import torch


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def dict_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(tensor_bytes(t) for t in tensors.values())


# cuBLAS keeps one workspace per (handle, stream) in the caching allocator, and PyTorch has one handle per
# thread: the forward's thread and autograd's device thread each hold one, for the whole process. Their size
# is PyTorch's choice (CublasHandlePool.cpp): CUBLAS_WORKSPACE_CONFIG's sum, else 32 MiB from Hopper (sm90)
# on and 8 MiB + 128 KiB before. Computed rather than probed: a probe sees nothing once they exist.
CUBLAS_THREADS = 2
HOPPER_MAJOR = 9


def cublas_workspace_bytes(major: int = HOPPER_MAJOR) -> int:
    """What the CUDA libraries hold in the allocator for matmuls in forward and backward on a GPU of compute
    capability `major`: it counts against the budget like any tensor (the allocator's peak includes it)."""
    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG", "")
    pools = re.findall(r":(\d+):(\d+)", config)
    if pools:
        per_handle = sum(int(kib) * 1024 * int(count) for kib, count in pools)
    else:
        per_handle = 4096 * 8 * 1024 if major >= HOPPER_MAJOR else 4096 * 1024 * 2 + 16 * 1024 * 8
    return CUBLAS_THREADS * per_handle


def workspace_bytes(device: torch.device) -> int:
    """The cuBLAS workspaces a run on `device` holds: for that GPU here, else (planning for a GPU elsewhere)
    Hopper's; 0 off CUDA."""
    if device.type != "cuda":
        return 0
    if torch.cuda.is_available():
        return cublas_workspace_bytes(torch.cuda.get_device_capability(device)[0])
    return cublas_workspace_bytes()


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
