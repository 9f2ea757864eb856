"""The compute side inside a Ray actor: shard versions arrive as ObjectRefs, gradients leave for the store actor.

StreamCompute does the step; this class adapts it to Ray: it reads shard versions from the object
store, sends each shard's gradients to the store actor (starting the shard's update at once in
immediate mode), keeps boundaries in the object store when trace_storage is object-store, and sets
the run's Ray gauges.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import torch

from perkunas_ray.checkpoint.format import decode_rng, encode_rng
from perkunas_ray.config import RunConfig
from perkunas_ray.device import resolve_device
from perkunas_ray.stream.compute import StreamCompute
from perkunas_ray.stream.interface import StepStats, UpdatePlan
from perkunas_ray.stream.staging import Loader
from perkunas_ray.telemetry.train_metrics import TrainMetrics

# shard name -> (ObjectRef of its new version, ObjectRef of the store's stats) of an update started in the step
StartedUpdates = dict[str, tuple[Any, Any]]


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


class RemoteCompute:
    def __init__(self, cfg: RunConfig, store: Any, run_name: str) -> None:
        self.store = store  # the shard store actor's handle
        self.device = resolve_device(cfg.train.device)
        factory = None
        if cfg.stream.trace_storage == "object-store":
            factory = lambda tracker: ObjectStoreTraces(self.device)  # noqa: E731
        self.core = StreamCompute(cfg, self.device, factory)
        self.metrics = TrainMetrics(run_name)

    def train_step(self, batch: np.ndarray, refs: dict[str, Any], plan: UpdatePlan,
                   snapshot: bool) -> tuple[StepStats, StartedUpdates]:
        landed: list[Any] = []
        started: StartedUpdates = {}

        def sink(name: str, grads: dict[str, torch.Tensor], norms: list[float]) -> None:
            arrays = {k: g.detach().to("cpu").numpy() for k, g in grads.items()}
            if plan.immediate:
                started[name] = self.store.put_and_update.options(num_returns=2).remote(name, arrays, plan.lr,
                                                                                         snapshot)
            else:
                landed.append(self.store.put_grads.remote(name, arrays))

        stats = self.core.train_step(batch, object_loader(refs), sink, plan)
        ray.get(landed)  # the driver's update calls must find every shard's gradients in the store
        return stats, started

    def eval_losses(self, batches: np.ndarray, refs: dict[str, Any]) -> list[float]:
        return self.core.eval_losses(batches, object_loader(refs))

    def rng_state(self) -> str:
        return encode_rng(torch.get_rng_state())

    def set_rng_state(self, state: str) -> None:
        torch.set_rng_state(decode_rng(state))

    def emit(self, record: dict[str, Any], event: str = "step") -> None:
        if event == "validation":
            self.metrics.record_validation(float(record["val_loss"]))
        else:
            self.metrics.record_step(record)
