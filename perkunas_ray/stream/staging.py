"""Read-ahead staging of shard parameters onto the compute device, within the residency budget."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from perkunas_ray.stream.device_copy import Copy, DeviceCopier
from perkunas_ray.stream.memory import MemoryTracker, dict_bytes

Loader = Callable[[str], dict[str, Any]]  # shard name -> {param name: numpy array | tensor} (host copy)


@dataclasses.dataclass(frozen=True)
class StageEntry:
    """One use of a shard in the step's schedule; `borrow` names (shard, param) pairs it also needs."""

    shard: str
    phase: str  # forward | backward | eval
    borrow: tuple[tuple[str, str], ...] = ()


class ShardStager:
    """Loads the schedule's shards in order, at most `window` ahead and within the shard/byte budgets.

    `take(i)` hands out entry i (waiting if it is not staged yet: a prefetch miss), `release(i)` frees it.
    With window 0 (or threaded=False) loading happens in `take`, on the caller's thread.
    """

    def __init__(self, loader: Loader, entries: list[StageEntry], device: torch.device, tracker: MemoryTracker,
                 max_resident: int, max_bytes: int = 0, window: int = 1, grad_allowance: int = 0,
                 activation_allowance: Callable[[], int | None] | None = None) -> None:
        self.loader, self.entries, self.device, self.tracker = loader, entries, device, tracker
        self.max_resident, self.max_bytes, self.window = max_resident, max_bytes, window
        self.grad_allowance = grad_allowance
        self.activation_allowance = activation_allowance or (lambda: 0)
        self.copier = DeviceCopier(device)
        self.staged: dict[int, Copy] = {}
        self.cursor = 0  # index of the entry the compute side is on
        self.hits = self.misses = 0
        self.wait_s = 0.0
        self.max_resident_seen = 0
        self.max_resident_bytes = 0
        self._resident_bytes = 0
        self._cache: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self._next_to_load = 0
        self._thread: threading.Thread | None = None
        if window > 0:
            self._thread = threading.Thread(target=self._run, name="shard-stager", daemon=True)
            self._thread.start()

    # ---- loading -----------------------------------------------------------------------------------
    def _host(self, shard: str) -> dict[str, Any]:
        if shard not in self._cache:
            self._cache[shard] = self.loader(shard)
        return self._cache[shard]

    def _load(self, index: int) -> Copy:
        entry = self.entries[index]
        values = dict(self._host(entry.shard))
        for shard, name in entry.borrow:
            values[name] = self._host(shard)[name]
        return self.copier.copy(values)

    def _fits(self, index: int) -> bool:
        if len(self.staged) >= self.max_resident:
            return False
        if index > self.cursor + self.window:
            return False
        if not self.max_bytes or index == self.cursor:
            return True
        allowance = self.activation_allowance()
        if allowance is None and self.entries[index].phase == "backward":
            return False  # saved-activation size not measured yet: do not stage beside a replay
        # the current entry's gradients are already live; this entry's come only after the current is released
        need = self._entry_bytes(index) + (allowance or 0)
        return self.tracker.live_bytes() + need <= self.max_bytes

    def entry_bytes(self, index: int) -> int:
        """Bytes of entry `index`'s tensors (its gradients take as much: the compute side reserves them)."""
        with self._cond:
            return self._entry_bytes(index)

    def _entry_bytes(self, index: int) -> int:
        entry = self.entries[index]
        host = self._host(entry.shard)
        total = sum(v.nbytes if isinstance(v, np.ndarray) else v.numel() * v.element_size() for v in host.values())
        for shard, name in entry.borrow:
            v = self._host(shard)[name]
            total += v.nbytes if isinstance(v, np.ndarray) else v.numel() * v.element_size()
        return total

    def _commit(self, index: int, copy: Copy) -> None:
        nbytes = dict_bytes(copy.tensors)
        self.staged[index] = copy
        self.tracker.add("shards", nbytes)
        self.tracker.remember(copy.tensors)
        self._resident_bytes += nbytes
        self.max_resident_seen = max(self.max_resident_seen, len(self.staged))
        self.max_resident_bytes = max(self.max_resident_bytes, self._resident_bytes)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and (self._next_to_load >= len(self.entries)
                                                or not self._fits(self._next_to_load)):
                        if self._next_to_load >= len(self.entries):
                            return
                        self._cond.wait(timeout=0.05)
                    if self._closed:
                        return
                    index = self._next_to_load
                tensors = self._load(index)
                with self._cond:
                    self._commit(index, tensors)
                    self._next_to_load += 1
                    self._cond.notify_all()
        except BaseException as exc:  # surfaced to the compute thread in take()
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    # ---- the compute side --------------------------------------------------------------------------
    def take(self, index: int) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        with self._cond:
            self.cursor = index
            self._cond.notify_all()
            if index in self.staged:
                self.hits += 1
                return self.copier.ready(self.staged[index])
            self.misses += 1
            if self._thread is None:
                tensors = self._load(index)
                self._commit(index, tensors)
                self._next_to_load = index + 1
            else:
                while index not in self.staged:
                    if self._error is not None:
                        raise self._error
                    self._cond.wait(timeout=0.05)
            self.wait_s += time.perf_counter() - start
            return self.copier.ready(self.staged[index])

    def release(self, index: int) -> None:
        with self._cond:
            copy = self.staged.pop(index, None)
            if copy is not None:
                nbytes = dict_bytes(copy.tensors)
                self.tracker.sub("shards", nbytes)
                self.tracker.forget(copy.tensors)
                self._resident_bytes -= nbytes
            still_needed = {e.shard for e in self.entries[index + 1:]}
            still_needed |= {s for e in self.entries[index + 1:] for s, _ in e.borrow}
            for shard in list(self._cache):
                if shard not in still_needed:
                    del self._cache[shard]
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for index in list(self.staged):
            self.release(index)
