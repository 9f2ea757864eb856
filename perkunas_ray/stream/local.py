"""The in-process backend: shard store, compute and flusher as plain objects in one process (no Ray).

Shard updates run on one updater thread, so the store's update of a shard overlaps the backward of
the shards below it (immediate mode) or the next step's forward (deferred updates); whoever reads a
shard next waits for that shard's update only. Gradients reach the store through the same thread: on
CUDA their copy to the host runs on a side stream (device_copy.GradDrain) and the thread waits for it.
`stream.overlap_updates` off runs every update inline instead (the same numbers, bit for bit).

With `stream.delayed_update` (ZeRO-Offload's delayed parameter update) a step's updates start behind a
snapshot of each shard's parameters, and the next step reads the snapshots: its forward and backward no
longer wait for the updates, which run beside all of it, at the price of gradients one update stale.

On the resident path (stream/residency.py) the store's masters live on the device: gradients are handed
over where they are, and the updates run inline.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perkunas_ray.checkpoint.flush import CheckpointFlusher
from perkunas_ray.checkpoint.format import CHECKPOINTS, checkpoint_dir_name, decode_rng, encode_rng
from perkunas_ray.config import RunConfig
from perkunas_ray.stream.compute import StreamCompute
from perkunas_ray.stream.device_copy import GradDrain
from perkunas_ray.stream.interface import PendingUpdates, StepStats, StoreStats, UpdatePlan
from perkunas_ray.stream.memory import dict_bytes
from perkunas_ray.stream.residency import resident_compute_config
from perkunas_ray.stream.store import ShardStore


class LocalBackend:
    """Without a flusher nothing reaches the durable dir."""

    def __init__(self, cfg: RunConfig, store: ShardStore, device: torch.device, active_dir: Path,
                 flusher: CheckpointFlusher | None = None, resident: bool = False) -> None:
        self.cfg, self.store, self.device = cfg, store, device
        self.active_dir = Path(active_dir)
        self.flusher = flusher
        self.resident = resident
        compute_cfg = resident_compute_config(cfg) if resident else cfg
        self.compute = StreamCompute(compute_cfg, device)
        self.drain = GradDrain(device)
        self._updater = ThreadPoolExecutor(1, thread_name_prefix="shard-update") \
            if compute_cfg.stream.overlap_updates else None
        # shard -> its last task in flight (landing its gradients, updating); one thread runs them in order
        self._updates: dict[str, Future] = {}
        self._delay = False  # this step's updates are delayed (UpdatePlan.delayed)
        # delayed updates: shard -> (its parameters before its update in flight, the task that took them)
        self._snapshots: dict[str, tuple[dict[str, torch.Tensor], Future]] = {}

    def _submit(self, name: str, task: Callable[[], object]) -> Future:
        if self._updater is None:
            done: Future = Future()
            done.set_result(task())
            return done
        before = self._updates.get(name)

        def after_before() -> None:
            if before is not None:
                before.result()  # done already (one thread, in order); re-raises its error here
            task()

        self._updates[name] = self._updater.submit(after_before)
        return self._updates[name]

    def _start_update(self, name: str, lr: float, clip_coef: float | None, grad_scale: float,
                      snapshot: bool) -> None:
        if self._delay:  # the copy is taken in order on the updater thread, right before the update changes them
            taken: dict[str, torch.Tensor] = {}
            task = self._submit(name, lambda: taken.update(
                {k: t.clone() for k, t in self.store.shard_tensors(name).items()}))
            self._snapshots[name] = (taken, task)
        self._submit(name, lambda: self.store.update(name, lr, clip_coef, grad_scale, snapshot))

    def _hand_over(self, name: str, grads: dict[str, torch.Tensor]) -> None:
        """Start the gradients' copy to the host; the updater thread waits for it and stashes them in the store.
        The copy overlaps the next shard's replay only when the budget has room for both shards' gradients.
        On the resident path the store takes them where they are."""
        if self.resident:
            self._submit(name, lambda: self.store.put_grads(name, grads))
            return
        budget = self.cfg.stream.max_resident_bytes
        overlap = not budget or self.compute.tracker.live_bytes() + dict_bytes(grads) <= budget
        copy = self.drain.start(grads, overlap)
        self._submit(name, lambda: self.store.put_grads(name, copy.wait()))

    def _wait(self, name: str) -> None:
        update = self._updates.pop(name, None)
        if update is not None:
            update.result()  # an update's error surfaces here

    def _wait_all(self) -> None:
        for name in list(self._updates):
            self._wait(name)

    def _loader(self, name: str) -> dict[str, torch.Tensor]:
        self._wait(name)
        return self.store.shard_tensors(name)

    def _stale_loader(self, snapshots: dict[str, tuple[dict[str, torch.Tensor], Future]]) -> Callable[
            [str], dict[str, torch.Tensor]]:
        """Reads the snapshot a delayed update left of a shard (once taken), else the shard as it is now."""
        def load(name: str) -> dict[str, torch.Tensor]:
            if name not in snapshots:
                return self._loader(name)
            taken, task = snapshots[name]
            task.result()
            return taken

        return load

    def train_step(self, batch: np.ndarray, plan: UpdatePlan, snapshot: bool) -> tuple[StepStats, PendingUpdates]:
        # The previous step's snapshots are this step's parameters; this step's updates leave new ones if delayed.
        snapshots, self._snapshots = self._snapshots, {}
        self._delay = plan.delayed

        def sink(name: str, grads: dict[str, torch.Tensor], norms: list[float]) -> None:
            self._hand_over(name, grads)
            if plan.immediate:
                self._start_update(name, plan.lr, None, 1.0, snapshot)

        try:
            return self.compute.train_step(batch, self._stale_loader(snapshots), sink, plan), PendingUpdates()
        finally:
            self.drain.settle()  # the step's last gradients are on the host before anyone reads the figures

    def update_all(self, lr: float, clip_coef: float | None, grad_scale: float, snapshot: bool) -> PendingUpdates:
        for name in self.store.names:
            self._start_update(name, lr, clip_coef, grad_scale, snapshot)
        return PendingUpdates()

    def update_stats(self, pending: PendingUpdates) -> StoreStats:
        self._wait_all()
        return self.store.stats()

    def eval_losses(self, batches: np.ndarray) -> list[float]:
        return self.compute.eval_losses(batches, self._loader)

    def restore(self) -> None:
        self._wait_all()
        self.store.restore()

    def commit(self) -> None:
        self._wait_all()
        self.store.commit()

    def checkpoint(self, step: int, state: dict[str, Any]) -> Path:
        self._wait_all()
        ckpt = self.active_dir / CHECKPOINTS / checkpoint_dir_name(step)
        flushed = self.last_flushed_step() if self.flusher is not None else None
        self.store.checkpoint(ckpt, state, prune_root=self.active_dir, keep=self.cfg.checkpoint.keep_last_checkpoints,
                              last_flushed_step=flushed)
        return ckpt

    def flush(self, step: int) -> None:
        if self.flusher is not None:
            self.store.drain()
            self.flusher.flush(step)

    def last_flushed_step(self, wait: bool = False) -> int:
        if wait:
            self.store.drain()
        return self.flusher.last_flushed_step if self.flusher is not None else -1

    def rng_state(self) -> str:
        return encode_rng(torch.get_rng_state())

    def set_rng_state(self, state: str) -> None:
        torch.set_rng_state(decode_rng(state))

    def emit(self, record: dict[str, Any], event: str = "step") -> None:
        return None

    def close(self) -> None:
        self._wait_all()
        if self._updater is not None:
            self._updater.shutdown()
        self.store.close()
