"""TrainLoop's backend over the run's Ray actors, and its supervision: an actor death becomes a clear error.

Shard versions are ObjectRefs returned by the store actor; the driver only passes them along. The
actors themselves are built by actors/driver.py, which hands them in.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from perkunas_ray.checkpoint.format import CHECKPOINTS, checkpoint_dir_name
from perkunas_ray.config import RunConfig
from perkunas_ray.errors import PerkunasError
from perkunas_ray.model.shards import stream_shard_specs
from perkunas_ray.stream.actor_options import actor_name
from perkunas_ray.stream.interface import ActorFailure, PendingUpdates, StepStats, StoreStats, UpdatePlan
from perkunas_ray.stream.session import RunPaths


class RayBackend:
    """`actors`: role (shard_store, compute, prefetch, checkpoint_flusher) -> actor handle; each answers `ping`."""

    def __init__(self, cfg: RunConfig, actors: dict[str, Any], paths: RunPaths, resume_step: int,
                 run_name: str) -> None:
        self.cfg, self.actors, self.paths, self.run_name = cfg, actors, paths, run_name
        self.store, self.compute = actors["shard_store"], actors["compute"]
        self.prefetch, self.flusher = actors["prefetch"], actors["checkpoint_flusher"]
        self.names = [s.name for s in stream_shard_specs(cfg.model)]
        self._last_flushed = resume_step
        self._flushes: list[Any] = []
        self._grads: dict[str, Any] = {}  # shard -> ObjectRef of the last step's gradients, until its update
        self._get([a.ping.remote() for a in actors.values()])
        self.refs = {n: self.store.get_shard.remote(n) for n in self.names}

    # ---- supervision ---------------------------------------------------------------------------------
    def _get(self, refs: Any, timeout: float | None = None) -> Any:
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
            if isinstance(cause, PerkunasError):
                raise cause from None
            raise ActorFailure(f"run {self.paths.durable}: an actor call failed: {exc}") from exc
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
            raise ActorFailure(f"{self._dead()} died ({type(exc).__name__}); {self._resume_hint()}") from exc

    def _dead(self) -> str:
        dead = []
        for role, handle in self.actors.items():
            try:
                ray.get(handle.ping.remote(), timeout=5)
            except Exception:
                dead.append(role)
        return "actor(s) " + ", ".join(dead) if dead else "an actor"

    def _resume_hint(self) -> str:
        if self._last_flushed >= 0:
            return (f"the durable checkpoint at step {self._last_flushed} in {self.paths.durable} is intact; "
                    f"resume with --train --run-dir {self.paths.durable}")
        return f"no durable checkpoint was written yet in {self.paths.durable}"

    # ---- the Backend protocol ------------------------------------------------------------------------
    def train_step(self, batch: np.ndarray, plan: UpdatePlan, snapshot: bool) -> tuple[StepStats, PendingUpdates]:
        stats, handoff = self._get(self.compute.train_step.remote(ray.put(batch), dict(self.refs), plan, snapshot))
        for name, (arrays, _) in handoff.started.items():
            self.refs[name] = arrays
        self._grads = handoff.grads
        return stats, PendingUpdates([store_stats for _, store_stats in handoff.started.values()])

    def update_all(self, lr: float, clip_coef: float | None, grad_scale: float, snapshot: bool) -> PendingUpdates:
        """The gradient refs go straight into the update calls: Ray hands the store each shard's gradients."""
        pending = PendingUpdates()
        for name in self.names:  # forward order: the next forward's first shards are ready first
            grads = self._grads.pop(name, None)  # a guard replay reuses the store's stashed gradients
            arrays, stats = self.store.update.options(num_returns=2).remote(name, lr, clip_coef, grad_scale,
                                                                            snapshot, grads)
            self.refs[name] = arrays
            pending.waits.append(stats)
        if self.cfg.stream.prefetch_shards != "none":
            self.prefetch.stage.remote([[self.refs[n]] for n in self.names])  # nested: Ray passes the refs along
        return pending

    def update_stats(self, pending: PendingUpdates) -> StoreStats:
        """One fetch: the store serves calls in order, so the last update's figures are the newest."""
        if pending.waits:
            return self._get(pending.waits)[-1]
        return self._get(self.store.stats.remote())

    def eval_losses(self, batches: np.ndarray) -> list[float]:
        return self._get(self.compute.eval_losses.remote(ray.put(batches), dict(self.refs)))

    def restore(self) -> None:
        self._get(self.store.restore.remote())
        self.refs = {n: self.store.get_shard.remote(n) for n in self.names}

    def commit(self) -> None:
        self._get(self.store.commit.remote())

    def checkpoint(self, step: int, state: dict[str, Any]) -> Path:
        ckpt = self.paths.active / CHECKPOINTS / checkpoint_dir_name(step)
        self._get(self.store.checkpoint.remote(str(ckpt), state, str(self.paths.active),
                                               self.cfg.checkpoint.keep_last_checkpoints, self.last_flushed_step()))
        return ckpt

    def flush(self, step: int) -> None:
        self._flushes.append(self.flusher.flush.remote(step))

    def last_flushed_step(self, wait: bool = False) -> int:
        if wait and self._flushes:
            self._get(self.store.drain.remote())
            done = self._get(self._flushes)
            self._flushes = []
            self._last_flushed = max([self._last_flushed, *done])
        elif self._flushes:
            ready, self._flushes = ray.wait(self._flushes, num_returns=len(self._flushes), timeout=0)
            if ready:
                self._last_flushed = max([self._last_flushed, *self._get(ready)])
        return self._last_flushed

    def rng_state(self) -> str:
        return self._get(self.compute.rng_state.remote())

    def set_rng_state(self, state: str) -> None:
        self._get(self.compute.set_rng_state.remote(state))

    def emit(self, record: dict[str, Any], event: str = "step") -> None:
        self.flusher.emit.remote(record, event)  # off the device owner's queue

    def close(self) -> None:
        with contextlib.suppress(Exception):
            ray.get(self.store.drain.remote(), timeout=120)
        for handle in self.actors.values():
            with contextlib.suppress(Exception):
                ray.kill(handle)
        deadline = time.time() + 10
        for role in self.actors:  # names are free again when the kills have landed
            while time.time() < deadline:
                try:
                    ray.get_actor(actor_name(self.run_name, role), namespace=self.cfg.ray.namespace)
                except ValueError:
                    break
                time.sleep(0.05)
