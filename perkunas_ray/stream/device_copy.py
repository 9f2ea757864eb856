"""Host <-> device copies: staged shards in, gradients out; on CUDA on side streams through pinned memory.

A copy on the compute stream (or from pageable memory, which CUDA copies synchronously) makes shard k+1's
parameters wait for shard k's kernels and the kernels wait for the copy. Issued on a copy stream of its own from
pinned host memory, shard k+1 crosses PCIe while shard k computes (MegaTrain's copy stream). The compute
thread then makes its stream wait for the copy's event before the first use (`ready`), and tells the caching
allocator the tensors are used there, so their memory is not handed out again before the compute is done
with it. Pinned buffers come from PyTorch's caching host allocator, which keeps each one until the copy that
read it has finished. On other devices a copy is a plain `.to()`.

Gradients leave the same way in the other direction (`GradDrain`), on a third stream, so PCIe's two
directions work at once: shard k's gradients cross while shard k-1 replays.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch


def host_tensor(value: Any) -> torch.Tensor:
    """A numpy array (zero-copy; object-store arrays are read-only and never written) or a tensor as a tensor."""
    if isinstance(value, np.ndarray):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
            return torch.from_numpy(value)
    return value


class Copy:
    """Tensors on the device; `event` (CUDA only) completes when their copy has."""

    def __init__(self, tensors: dict[str, torch.Tensor], event: torch.cuda.Event | None = None) -> None:
        self.tensors = tensors
        self.event = event


class DeviceCopier:
    """Copies host values onto `device`, asynchronously on CUDA (see module doc)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def copy(self, values: dict[str, Any]) -> Copy:
        """Start copying `values` (name -> numpy array or tensor); callable from any thread."""
        if self.stream is None:
            return Copy({k: self._plain(host_tensor(v)) for k, v in values.items()})
        tensors = {}
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            for name, value in values.items():
                host = host_tensor(value)
                if host.device.type == "cpu" and not host.is_pinned():
                    pinned = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
                    host = pinned.copy_(host)
                tensors[name] = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return Copy(tensors, event)

    def _plain(self, host: torch.Tensor) -> torch.Tensor:
        return host.to(self.device, non_blocking=True) if host.device != self.device else host

    def ready(self, copy: Copy) -> dict[str, torch.Tensor]:
        """On the compute thread, before the first use: the compute stream waits for the copy."""
        if copy.event is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(copy.event)
            for tensor in copy.tensors.values():
                tensor.record_stream(compute)
            copy.event = None
        return copy.tensors


class HostCopy:
    """Tensors copied to the host; on CUDA `wait()` blocks until the copy has landed and lets the device's
    source tensors go (they are held until then, so the allocator's figure counts them while in flight)."""

    def __init__(self, tensors: dict[str, torch.Tensor], event: torch.cuda.Event | None = None,
                 sources: dict[str, torch.Tensor] | None = None) -> None:
        self.tensors, self.event, self.sources = tensors, event, sources

    def wait(self) -> dict[str, torch.Tensor]:
        event = self.event
        if event is not None:
            event.synchronize()
            self.event = self.sources = None
        return self.tensors


class GradDrain:
    """Device -> host copies of each shard's gradients, asynchronous on CUDA (see module doc).

    At most one copy is in flight: starting the next waits for it first, so the device holds at most one
    shard's gradients beyond those being computed; `overlap=False` (no room in the budget for that) waits at
    once, as a synchronous copy would.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.in_flight: HostCopy | None = None

    def start(self, grads: dict[str, torch.Tensor], overlap: bool = True) -> HostCopy:
        """On the compute thread, once the gradients are computed (queued) on the compute stream."""
        if self.stream is None:
            return HostCopy({k: g.to("cpu") for k, g in grads.items()})
        self.settle()
        produced = torch.cuda.Event()
        produced.record(torch.cuda.current_stream(self.device))
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            self.stream.wait_event(produced)
            host = {k: torch.empty(g.shape, dtype=g.dtype, pin_memory=True).copy_(g, non_blocking=True)
                    for k, g in grads.items()}
            done = torch.cuda.Event()
            done.record(self.stream)
        copy = HostCopy(host, done, dict(grads))
        if overlap:
            self.in_flight = copy
        else:
            copy.wait()
        return copy

    def settle(self) -> None:
        """Wait for the copy in flight (if any)."""
        if self.in_flight is not None:
            self.in_flight.wait()
            self.in_flight = None
