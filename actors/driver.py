"""The driver: builds the named actors with their Ray options, runs the training loop over them, supervises.

    ShardStoreActor --shard versions (ObjectRefs)--> PrefetchActor / ComputeActor --grads--> ShardStoreActor
    CheckpointFlusherActor: active checkpoint -> durable dir

The loop itself is perkunas_ray.stream.loop.TrainLoop; RayBackend is its Ray implementation. An actor
death ends the run with an error that names the actor and the intact durable checkpoint to resume from.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from actors.compute import ComputeActor
from actors.flusher import CheckpointFlusherActor
from actors.prefetch import PrefetchActor
from actors.store import ShardStoreActor
from perkunas_ray.checkpoint.format import CHECKPOINTS, checkpoint_dir_name
from perkunas_ray.config import RunConfig
from perkunas_ray.data import PackedTokenDataset
from perkunas_ray.errors import PerkunasError
from perkunas_ray.model.shards import stream_shard_specs
from perkunas_ray.reference.trainer import TrainResult
from perkunas_ray.stream.interface import StepStats, StoreStats, UpdatePlan
from perkunas_ray.stream.loop import TrainLoop
from perkunas_ray.stream.session import RunPaths


class ActorFailure(RuntimeError):
    """An actor of the run died or failed; the message says which and where to resume from."""


def actor_name(run_name: str, role: str) -> str:
    return f"perkunas:{run_name}:{role}"


def build_actors(cfg: RunConfig, paths: RunPaths, ckpt_dir: Path, run_name: str,
                 compute_threads: int = 0) -> dict[str, Any]:
    """Apply Ray options here (the classes in actors/ stay plain): names, resources, no restarts."""
    use_gpu = cfg.train.device.startswith("cuda") or (
        cfg.train.device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1)
    opts = {"namespace": "perkunas", "max_restarts": 0, "lifetime": None}
    store = ray.remote(ShardStoreActor).options(name=actor_name(run_name, "shard_store"), num_cpus=0, **opts) \
        .remote(cfg, str(ckpt_dir))
    compute = ray.remote(ComputeActor).options(
        name=actor_name(run_name, "compute"), num_cpus=0 if use_gpu else 1, num_gpus=1 if use_gpu else 0,
        **opts).remote(cfg, store, run_name, compute_threads)
    prefetch = ray.remote(PrefetchActor).options(name=actor_name(run_name, "prefetch"), num_cpus=0, **opts) \
        .remote(cfg.stream.prefetch_window)
    flusher = ray.remote(CheckpointFlusherActor).options(name=actor_name(run_name, "checkpoint_flusher"),
                                                         num_cpus=0, **opts) \
        .remote(paths.durable, str(paths.active), cfg.checkpoint.keep_last_checkpoints, paths.mirrored_files)
    return {"shard_store": store, "compute": compute, "prefetch": prefetch, "checkpoint_flusher": flusher}


class RayBackend:
    """TrainLoop's backend over the actors; shard versions are ObjectRefs returned by the store."""

    def __init__(self, cfg: RunConfig, actors: dict[str, Any], paths: RunPaths, resume_step: int,
                 run_name: str) -> None:
        self.cfg, self.actors, self.paths, self.run_name = cfg, actors, paths, run_name
        self.store, self.compute = actors["shard_store"], actors["compute"]
        self.prefetch, self.flusher = actors["prefetch"], actors["checkpoint_flusher"]
        self.names = [s.name for s in stream_shard_specs(cfg.model)]
        self._last_flushed = resume_step
        self._flushes: list[Any] = []
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
            raise ActorFailure(f"{self._where()}: an actor call failed: {exc}") from exc
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
            raise ActorFailure(f"{self._dead()} died ({type(exc).__name__}); {self._resume_hint()}") from exc

    def _where(self) -> str:
        return f"run {self.paths.durable}"

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
    def _schedule(self) -> list[Any]:
        return [[self.refs[n]] for n in self.names]

    def train_step(self, batch: np.ndarray, plan: UpdatePlan, snapshot: bool) -> StepStats:
        stats: StepStats = self._get(self.compute.train_step.remote(ray.put(batch), dict(self.refs), plan, snapshot))
        for name, (arrays, _) in stats.new_versions.items():
            self.refs[name] = arrays
        return stats

    def update_all(self, lr: float, clip_coef: float | None, grad_scale: float, snapshot: bool) -> Any:
        stats_refs = []
        for name in self.names:  # forward order: the next forward's first shards are ready first
            arrays, stats = self.store.update.options(num_returns=2).remote(name, lr, clip_coef, grad_scale, snapshot)
            self.refs[name] = arrays
            stats_refs.append(stats)
        if self.cfg.stream.prefetch_shards != "none":
            self.prefetch.stage.remote(self._schedule())
        return stats_refs

    def update_stats(self, token: Any) -> StoreStats:
        if isinstance(token, dict):
            token = [stats for _, stats in token.values()]
        if token:
            self._get(list(token))
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
                                               self.cfg.checkpoint.keep_last_checkpoints))
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
        self.compute.emit.remote(record, event)

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
                    ray.get_actor(actor_name(self.run_name, role), namespace="perkunas")
                except ValueError:
                    break
                time.sleep(0.05)


def run_training(cfg: RunConfig, paths: RunPaths, train: PackedTokenDataset, val: PackedTokenDataset | None,
                 ckpt_dir: Path, state: dict[str, Any], run_name: str, verbose: bool = True,
                 max_steps: int | None = None, compute_threads: int = 0) -> TrainResult:
    """Train from checkpoint `ckpt_dir` (whose state.json is `state`) on the connected Ray cluster."""
    actors = build_actors(cfg, paths, ckpt_dir, run_name, compute_threads)
    backend = RayBackend(cfg, actors, paths, resume_step=int(state["step"]), run_name=run_name)
    try:
        loop = TrainLoop(cfg, backend, train, val, paths.log_dir, state, verbose=verbose)
        return loop.run(max_steps)
    finally:
        backend.close()
