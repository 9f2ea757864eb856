"""ComputeActor: a thin Ray shell over perkunas_ray.stream.remote_compute.RemoteCompute (the only owner of the device)."""

from __future__ import annotations

from typing import Any

import numpy as np

from perkunas_ray.config import RunConfig
from perkunas_ray.stream.interface import StepStats, UpdatePlan
from perkunas_ray.stream.remote_compute import GradientHandoff, RemoteCompute
from perkunas_ray.stream.worker_process import prepare_worker_process


class ComputeActor:
    def __init__(self, cfg: RunConfig, store: Any) -> None:
        prepare_worker_process(cfg.ray.compute_threads)
        self.core = RemoteCompute(cfg, store)

    def ping(self) -> str:
        return str(self.core.device)

    def train_step(self, batch: np.ndarray, refs: dict[str, Any], plan: UpdatePlan,
                   snapshot: bool) -> tuple[StepStats, GradientHandoff]:
        return self.core.train_step(batch, refs, plan, snapshot)

    def eval_losses(self, batches: np.ndarray, refs: dict[str, Any]) -> list[float]:
        return self.core.eval_losses(batches, refs)

    def rng_state(self) -> str:
        return self.core.rng_state()

    def set_rng_state(self, state: str) -> None:
        self.core.set_rng_state(state)
