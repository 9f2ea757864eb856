"""The in-process backend: shard store, compute and flusher as plain objects in one process (no Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from perkunas_ray.checkpoint.flush import CheckpointFlusher
from perkunas_ray.checkpoint.format import CHECKPOINTS, checkpoint_dir_name, decode_rng, encode_rng
from perkunas_ray.config import RunConfig
from perkunas_ray.stream.compute import StreamCompute
from perkunas_ray.stream.interface import PendingUpdates, StepStats, StoreStats, UpdatePlan
from perkunas_ray.stream.store import ShardStore


class LocalBackend:
    """Updates run inline, so nothing is ever pending; without a flusher nothing reaches the durable dir."""

    def __init__(self, cfg: RunConfig, store: ShardStore, device: torch.device, active_dir: Path,
                 flusher: CheckpointFlusher | None = None) -> None:
        self.cfg, self.store, self.device = cfg, store, device
        self.active_dir = Path(active_dir)
        self.flusher = flusher
        self.compute = StreamCompute(cfg, device)

    def _loader(self, name: str) -> dict[str, torch.Tensor]:
        return self.store.shard_tensors(name)

    def train_step(self, batch: np.ndarray, plan: UpdatePlan, snapshot: bool) -> tuple[StepStats, PendingUpdates]:
        def sink(name: str, grads: dict[str, torch.Tensor], norms: list[float]) -> None:
            self.store.put_grads(name, {k: g.to("cpu") for k, g in grads.items()})
            if plan.immediate:
                self.store.update(name, plan.lr, None, 1.0, snapshot=snapshot)

        return self.compute.train_step(batch, self._loader, sink, plan), PendingUpdates()

    def update_all(self, lr: float, clip_coef: float | None, grad_scale: float, snapshot: bool) -> PendingUpdates:
        for name in self.store.names:
            self.store.update(name, lr, clip_coef, grad_scale, snapshot=snapshot)
        return PendingUpdates()

    def update_stats(self, pending: PendingUpdates) -> StoreStats:
        return self.store.stats()

    def eval_losses(self, batches: np.ndarray) -> list[float]:
        return self.compute.eval_losses(batches, self._loader)

    def restore(self) -> None:
        self.store.restore()

    def commit(self) -> None:
        self.store.commit()

    def checkpoint(self, step: int, state: dict[str, Any]) -> Path:
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
        self.store.close()
