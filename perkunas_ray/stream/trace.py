"""Trace storage: where the boundary activations of a step wait between forward and replay."""

from __future__ import annotations

from typing import Protocol

import torch

from perkunas_ray.errors import ConfigError
from perkunas_ray.stream.memory import MemoryTracker, tensor_bytes

Key = tuple[int, int]  # (shard index the boundary enters, micro-batch index)


class TraceStore(Protocol):
    def put(self, key: Key, tensor: torch.Tensor) -> None: ...

    def get(self, key: Key) -> torch.Tensor: ...

    def drop(self, key: Key) -> None: ...

    def clear(self) -> None: ...


def trace_device(storage: str, storage_device: str, compute_device: torch.device) -> torch.device:
    """cpu | device | secondary-device -> the torch device boundaries live on."""
    if storage == "device":
        return compute_device
    if storage == "secondary-device":
        if not storage_device:
            raise ConfigError("stream.trace_storage_device must name a device (e.g. cuda:1) when "
                              "stream.trace_storage is secondary-device")
        dev = torch.device(storage_device)
        if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
            raise ConfigError(f"stream.trace_storage_device is {storage_device!r} but that CUDA device is not "
                              f"available ({torch.cuda.device_count()} visible)")
        return dev
    return torch.device("cpu")


class LocalTraceStore:
    """Boundaries kept as tensors on one torch device; counted when they share the compute device's memory."""

    def __init__(self, storage_device: torch.device, compute_device: torch.device, tracker: MemoryTracker) -> None:
        self.storage_device = storage_device
        self.compute_device = compute_device
        self.tracker = tracker
        self.counted = storage_device == compute_device or (storage_device.type == compute_device.type == "cpu")
        self._traces: dict[Key, torch.Tensor] = {}

    def put(self, key: Key, tensor: torch.Tensor) -> None:
        stored = tensor.detach()
        if stored.device != self.storage_device:
            stored = stored.to(self.storage_device, non_blocking=self.storage_device.type == "cpu")
        self._traces[key] = stored
        if self.counted:
            self.tracker.add("boundaries", tensor_bytes(stored))
            self.tracker.remember([stored])

    def get(self, key: Key) -> torch.Tensor:
        return self._traces[key].to(self.compute_device)

    def drop(self, key: Key) -> None:
        stored = self._traces.pop(key, None)
        if stored is not None and self.counted:
            self.tracker.sub("boundaries", tensor_bytes(stored))
            self.tracker.forget([stored])

    def clear(self) -> None:
        for key in list(self._traces):
            self.drop(key)
