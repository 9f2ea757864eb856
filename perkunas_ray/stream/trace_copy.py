"""Boundaries kept on the host for a CUDA step, crossing PCIe on side streams instead of the compute stream.

A boundary copied with `.to()` on the compute stream holds the kernels up while it crosses: at 64K tokens a step a
~100M model moves ~4.5 GB of boundaries a step (each down once, up twice: the next shard's forward and the replay),
about a third of its compute time on an H100. Here each boundary leaves on a download stream as soon as it is
computed, into pinned memory (PyTorch's caching host allocator keeps a block until the copy that used it is done),
and each read starts the upload of the same shard's next micro-batch on an upload stream, so at most one boundary
waits on the device ahead of its use (counted as a boundary). Readers wait for an upload's event, never the host.
"""

from __future__ import annotations

import torch

from perkunas_ray.stream.memory import MemoryTracker, tensor_bytes
from perkunas_ray.stream.trace import Key


class OverlappedHostTraces:
    """The TraceStore of a CUDA step whose boundaries live on the host (stream.trace_storage cpu)."""

    def __init__(self, device: torch.device, tracker: MemoryTracker) -> None:
        self.device, self.tracker = device, tracker
        self.down = torch.cuda.Stream(device)
        self.up = torch.cuda.Stream(device)
        self._host: dict[Key, tuple[torch.Tensor, torch.cuda.Event]] = {}  # pinned copy, its download's event
        self._ahead: dict[Key, tuple[torch.Tensor, torch.cuda.Event]] = {}  # device copy, its upload's event

    def put(self, key: Key, tensor: torch.Tensor) -> None:
        compute = torch.cuda.current_stream(self.device)
        produced = torch.cuda.Event()
        produced.record(compute)
        with torch.cuda.device(self.device), torch.cuda.stream(self.down):
            self.down.wait_event(produced)
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor.detach(), non_blocking=True)
            tensor.record_stream(self.down)  # its memory is not handed out again before the copy has read it
            done = torch.cuda.Event()
            done.record(self.down)
        self._host[key] = (host, done)

    def _upload(self, key: Key) -> None:
        host, downloaded = self._host[key]
        with torch.cuda.device(self.device), torch.cuda.stream(self.up):
            self.up.wait_event(downloaded)
            copy = host.to(self.device, non_blocking=True)
            uploaded = torch.cuda.Event()
            uploaded.record(self.up)
        self._ahead[key] = (copy, uploaded)
        self.tracker.add("boundaries", tensor_bytes(copy))

    def get(self, key: Key) -> torch.Tensor:
        if key not in self._ahead:
            self._upload(key)
        copy, uploaded = self._ahead.pop(key)
        self.tracker.sub("boundaries", tensor_bytes(copy))
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(uploaded)
        copy.record_stream(compute)
        following = (key[0], key[1] + 1)  # the same shard's next micro-batch: the next read in either pass
        if following in self._host and following not in self._ahead:
            self._upload(following)
        return copy

    def drop(self, key: Key) -> None:
        self._host.pop(key, None)
        ahead = self._ahead.pop(key, None)
        if ahead is not None:
            self.tracker.sub("boundaries", tensor_bytes(ahead[0]))

    def clear(self) -> None:
        for key in list(self._host) + list(self._ahead):
            self.drop(key)
