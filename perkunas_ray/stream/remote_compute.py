"""The compute core inside a Ray worker: shard versions are read from the object store by ObjectRef, and
boundaries may live there too (trace_storage=object-store)."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import torch

from perkunas_ray.config import RunConfig
from perkunas_ray.stream.compute import StreamCompute
from perkunas_ray.stream.staging import Loader


class ObjectStoreTraces:
    """trace_storage=object-store: boundaries leave the compute process as object-store entries."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._refs: dict[tuple[int, int], tuple[Any, torch.dtype]] = {}

    def put(self, key: tuple[int, int], tensor: torch.Tensor) -> None:
        t = tensor.detach().to("cpu")
        dtype = t.dtype
        if dtype == torch.bfloat16:
            t = t.view(torch.int16)  # numpy has no bfloat16
        self._refs[key] = (ray.put(t.numpy()), dtype)

    def get(self, key: tuple[int, int]) -> torch.Tensor:
        ref, dtype = self._refs[key]
        t = torch.from_numpy(np.array(ray.get(ref)))
        return (t.view(torch.bfloat16) if dtype == torch.bfloat16 else t).to(self.device)

    def drop(self, key: tuple[int, int]) -> None:
        self._refs.pop(key, None)

    def clear(self) -> None:
        self._refs.clear()


def object_loader(refs: dict[str, Any]) -> Loader:
    """refs: shard name -> ObjectRef of that shard's current version (nested, so Ray does not resolve it)."""
    return lambda name: ray.get(refs[name])


def worker_compute(cfg: RunConfig, device: torch.device) -> StreamCompute:
    """The compute core of a Ray worker: boundaries go to the object store when trace_storage says so."""
    factory = None
    if cfg.stream.trace_storage == "object-store":
        factory = lambda tracker: ObjectStoreTraces(device)  # noqa: E731
    return StreamCompute(cfg, device, factory)
