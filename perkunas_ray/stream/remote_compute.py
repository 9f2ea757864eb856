"""The compute core inside a Ray worker: shard versions are read from the object store by ObjectRef, and
boundaries may live there too (trace_storage=object-store)."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import torch

from perkunas_ray.config import RunConfig
from perkunas_ray.stream.compute import StreamCompute
from perkunas_ray.stream.memory import MemoryTracker, tensor_bytes
from perkunas_ray.stream.staging import Loader
from perkunas_ray.stream.trace import Key


class ObjectStoreTraces:
    """trace_storage=object-store: boundaries leave the compute process as object-store entries, one entry per
    shard boundary holding all its micro-batches (one put, one get) when the byte budget has room to gather
    them, else one per micro-batch. Every Ray call wakes the raylet and the core worker's threads, which on a
    small machine preempt the compute threads mid-step: a put and a get per (boundary, micro-batch) made the
    2-core bench's streamed step ~10% slower (1.50-1.65 s against 1.39 s, single noisy runs)."""

    def __init__(self, device: torch.device, tracker: MemoryTracker, num_micro: int, max_bytes: int = 0) -> None:
        self.device, self.tracker, self.num_micro, self.max_bytes = device, tracker, num_micro, max_bytes
        self._pending: dict[int, dict[int, torch.Tensor]] = {}  # boundary -> micro-batch -> tensor, being gathered
        self._where: dict[Key, tuple[Any, int, torch.dtype]] = {}  # -> (its entry's ref, position in it, dtype)
        self._unread: dict[Any, int] = {}  # entry ref -> how many of its micro-batches are not dropped yet
        self._read: tuple[Any, list[np.ndarray]] | None = None  # the entry being read (zero-copy views)

    def put(self, key: Key, tensor: torch.Tensor) -> None:
        index, m = key
        t = tensor.detach().to("cpu")
        if self.max_bytes and self.tracker.live_bytes() + tensor_bytes(t) > self.max_bytes:
            for waiting in list(self._pending):  # no room to gather: what waits leaves now, and this one alone
                self._send(waiting, self._take_pending(waiting))
            self._send(index, {m: t})
            return
        pending = self._pending.setdefault(index, {})
        pending[m] = t
        self.tracker.add("boundaries", tensor_bytes(t))
        if len(pending) == self.num_micro:
            self._send(index, self._take_pending(index))

    def _take_pending(self, index: int) -> dict[int, torch.Tensor]:
        pending = self._pending.pop(index)
        self.tracker.sub("boundaries", sum(tensor_bytes(t) for t in pending.values()))
        return pending

    def _send(self, index: int, tensors: dict[int, torch.Tensor]) -> None:
        order = sorted(tensors)
        dtype = tensors[order[0]].dtype
        # numpy has no bfloat16: such boundaries travel as their int16 bits
        arrays = [(tensors[m].view(torch.int16) if dtype == torch.bfloat16 else tensors[m]).numpy() for m in order]
        ref = ray.put(arrays)
        self._unread[ref] = len(order)
        for position, m in enumerate(order):
            self._where[(index, m)] = (ref, position, dtype)

    def get(self, key: Key) -> torch.Tensor:
        index, m = key
        if m in self._pending.get(index, {}):  # still being gathered (never in the streamed schedules)
            return self._pending[index][m].to(self.device)
        ref, position, dtype = self._where[key]
        if self._read is None or self._read[0] is not ref:
            self._read = (ref, ray.get(ref))
        t = torch.from_numpy(np.array(self._read[1][position]))  # the object store's copy is read-only
        return (t.view(torch.bfloat16) if dtype == torch.bfloat16 else t).to(self.device)

    def drop(self, key: Key) -> None:
        where = self._where.pop(key, None)
        if where is None:
            return
        ref = where[0]
        self._unread[ref] -= 1
        if not self._unread[ref]:
            del self._unread[ref]
            if self._read is not None and self._read[0] is ref:
                self._read = None

    def clear(self) -> None:
        for index in list(self._pending):
            self._take_pending(index)
        self._where.clear()
        self._unread.clear()
        self._read = None


def object_loader(refs: dict[str, Any]) -> Loader:
    """refs: shard name -> ObjectRef of that shard's current version (nested, so Ray does not resolve it)."""
    return lambda name: ray.get(refs[name])


def worker_compute(cfg: RunConfig, device: torch.device) -> StreamCompute:
    """The compute core of a Ray worker: boundaries go to the object store when trace_storage says so."""
    factory = None
    if cfg.stream.trace_storage == "object-store":
        factory = lambda tracker, num_micro: ObjectStoreTraces(  # noqa: E731
            device, tracker, num_micro, cfg.stream.max_resident_bytes)
    return StreamCompute(cfg, device, factory)
