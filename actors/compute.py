"""ComputeActor: a thin Ray shell over perkunas_ray.stream.compute.StreamCompute (the only owner of the device)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
import ray
import torch

from perkunas_ray.checkpoint.format import decode_rng, encode_rng
from perkunas_ray.config import RunConfig
from perkunas_ray.device import resolve_device
from perkunas_ray.stream.compute import StreamCompute
from perkunas_ray.stream.interface import StepStats, UpdatePlan
from perkunas_ray.stream.memory import MemoryTracker
from perkunas_ray.telemetry.train_metrics import TrainMetrics


def normal_priority() -> None:
    """Ray starts workers at niceness 15; the compute loop is the run's critical path, so ask for 0 back."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, 0)


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


class ComputeActor:
    def __init__(self, cfg: RunConfig, store: Any, run_name: str, num_threads: int = 0) -> None:
        normal_priority()
        torch.set_num_threads(num_threads or os.cpu_count() or 1)
        self.cfg = cfg
        self.store = store
        self.device = resolve_device(cfg.train.device)
        factory = None
        if cfg.stream.trace_storage == "object-store":
            factory = lambda tracker: ObjectStoreTraces(self.device)  # noqa: E731
        self.core = StreamCompute(cfg, self.device, factory)
        self.metrics = TrainMetrics(run_name)

    def ping(self) -> str:
        return str(self.device)

    def _loader(self, refs: dict[str, Any]):
        return lambda name: ray.get(refs[name])

    def train_step(self, batch: np.ndarray, refs: dict[str, Any], plan: UpdatePlan, snapshot: bool) -> StepStats:
        """refs: shard name -> ObjectRef of that shard's current version (nested, so Ray does not resolve it)."""
        landed: list[Any] = []

        def sink(name: str, grads: dict[str, torch.Tensor], norms: list[float]) -> Any:
            arrays = {k: g.detach().to("cpu").numpy() for k, g in grads.items()}
            if plan.immediate:
                return self.store.put_and_update.options(num_returns=2).remote(name, arrays, plan.lr, snapshot)
            landed.append(self.store.put_grads.remote(name, arrays))
            return None

        stats = self.core.train_step(batch, self._loader(refs), sink, plan)
        ray.get(landed)  # the driver's update calls must find every shard's gradients in the store
        return stats

    def eval_losses(self, batches: np.ndarray, refs: dict[str, Any]) -> list[float]:
        return self.core.eval_losses(batches, self._loader(refs))

    def rng_state(self) -> str:
        return encode_rng(torch.get_rng_state())

    def set_rng_state(self, state: str) -> bool:
        torch.set_rng_state(decode_rng(state))
        return True

    def emit(self, record: dict[str, Any], event: str = "step") -> bool:
        if event == "validation":
            self.metrics.record_validation(float(record["val_loss"]))
        else:
            self.metrics.record_step(record)
        return True

    def tracker(self) -> MemoryTracker:
        return self.core.tracker
