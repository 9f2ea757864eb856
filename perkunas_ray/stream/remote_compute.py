"""The compute side inside a Ray actor: shard versions arrive as ObjectRefs, gradients leave as ObjectRefs.

StreamCompute does the step; this class adapts it to Ray: it reads shard versions from the object
store and hands each shard's gradients on without waiting for anyone: in immediate mode it starts the
shard's update on the store actor at once; otherwise it puts them in the object store and returns
their refs, which the driver passes to the store's update calls (Ray resolves them there, so no
separate hand-off call and no blocking wait here). Boundaries go to the object store when
trace_storage is object-store. Telemetry is not set here: the device owner only computes.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass
class GradientHandoff:
    """What a step leaves for the store, per shard, in the order the shards finished their backward."""

    started: dict[str, tuple[Any, Any]]  # immediate: (ObjectRef of the new version, of the store's stats)
    grads: dict[str, Any]  # deferred: ObjectRef of the shard's gradients, for the driver's update call


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
    def __init__(self, cfg: RunConfig, store: Any) -> None:
        self.store = store  # the shard store actor's handle
        self.device = resolve_device(cfg.train.device)
        factory = None
        if cfg.stream.trace_storage == "object-store":
            factory = lambda tracker: ObjectStoreTraces(self.device)  # noqa: E731
        self.core = StreamCompute(cfg, self.device, factory)

    def train_step(self, batch: np.ndarray, refs: dict[str, Any], plan: UpdatePlan,
                   snapshot: bool) -> tuple[StepStats, GradientHandoff]:
        handoff = GradientHandoff({}, {})

        def sink(name: str, grads: dict[str, torch.Tensor], norms: list[float]) -> None:
            arrays = {k: g.detach().to("cpu").numpy() for k, g in grads.items()}
            if plan.immediate:
                handoff.started[name] = self.store.update.options(num_returns=2).remote(
                    name, plan.lr, None, 1.0, snapshot, arrays)
            else:
                handoff.grads[name] = ray.put(arrays)

        stats = self.core.train_step(batch, object_loader(refs), sink, plan)
        return stats, handoff

    def eval_losses(self, batches: np.ndarray, refs: dict[str, Any]) -> list[float]:
        return self.core.eval_losses(batches, object_loader(refs))

    def rng_state(self) -> str:
        return encode_rng(torch.get_rng_state())

    def set_rng_state(self, state: str) -> None:
        torch.set_rng_state(decode_rng(state))
