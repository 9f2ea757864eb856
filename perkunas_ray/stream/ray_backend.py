"""TrainLoop's backend inside one data-parallel Ray Train worker, and its supervision.

Every worker runs the same TrainLoop over the whole global batch (num_workers x accumulation
micro-batches, so all see the same cursor and make the same decisions) and computes on its slice:
worker r takes the r-th of num_workers equal runs of micro-batches. Per shard, the gradients are
summed over the workers (grad_reduce); rank 0 hands the sums to the store, which updates once, and
alone talks to the prefetcher and the flusher. Shard versions are ObjectRefs made by rank 0's store
calls; the others find them on the ref board. A helper actor's death becomes ActorFailure, which
ends this attempt; Ray Train then restarts the group from the newest durable checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from perkunas_ray.checkpoint.format import CHECKPOINTS, checkpoint_dir_name, decode_rng, encode_rng
from perkunas_ray.config import RunConfig
from perkunas_ray.errors import PerkunasError
from perkunas_ray.model.shards import stream_shard_specs
from perkunas_ray.stream.actor_options import actor_name
from perkunas_ray.stream.batch import count_trained_targets
from perkunas_ray.stream.device_copy import GradDrain
from perkunas_ray.stream.grad_reduce import ShardReducer, gather_chunks, gather_rows
from perkunas_ray.stream.interface import ActorFailure, PendingUpdates, StepStats, StoreStats, UpdatePlan
from perkunas_ray.stream.remote_compute import object_loader, worker_compute
from perkunas_ray.stream.session import RunPaths

# What each worker reports per step (gathered in this order): its figures in the "worker" log records.
WORKER_FIGURES = ("loss_share", "wait_s", "forward_s", "backward_s", "reduce_s", "step_time_s", "tokens")


def split_sizes(num: int, world: int) -> list[int]:
    """How many of `num` batches each worker takes, in rank order (np.array_split's split)."""
    return [len(part) for part in np.array_split(np.arange(num), world)]


class RayBackend:
    """`actors`: role (shard_store, prefetch, checkpoint_flusher, and ref_board when world > 1) -> handle; each
    answers `ping`."""

    def __init__(self, cfg: RunConfig, actors: dict[str, Any], paths: RunPaths, resume_step: int,
                 run_name: str, device: torch.device, rank: int, world: int) -> None:
        self.cfg, self.actors, self.paths, self.run_name = cfg, actors, paths, run_name
        self.rank, self.world, self.device = rank, world, device
        self.store, self.board = actors["shard_store"], actors.get("ref_board")
        self.prefetch, self.flusher = actors["prefetch"], actors["checkpoint_flusher"]
        self.names = [s.name for s in stream_shard_specs(cfg.model)]
        self.compute = worker_compute(cfg, device)
        self.drain = GradDrain(device)
        self.reducer = ShardReducer(self._hand_off, self.compute.tracker, overlap=not cfg.stream.max_resident_bytes)
        self.compute.tied_grad_seed = self.reducer.tied_grad_seed
        self._last_flushed = resume_step
        self._flushes: list[Any] = []
        self._grads: dict[str, Any] = {}  # shard -> ObjectRef of the last step's summed gradients, until its update
        self._step_plan: tuple[UpdatePlan, bool] | None = None
        self._store_waits: list[Any] = []
        self._get([a.ping.remote() for a in actors.values()])
        self.helper_node = str(self._get(self.store.node_id.remote())) if rank == 0 else ""  # the host tier's node
        self.refs: dict[str, Any] = {}
        self._version, self._have = 0, -1  # the ref set this point of the loop needs / the one this worker has
        if rank == 0:
            self.refs = {n: self.store.get_shard.remote(n) for n in self.names}
            self._publish()

    # ---- supervision ---------------------------------------------------------------------------------
    def _get(self, refs: Any, timeout: float | None = None) -> Any:
        with self._supervised():
            return ray.get(refs, timeout=timeout)

    @contextlib.contextmanager
    def _supervised(self) -> Iterator[None]:
        """Ray errors of actor calls and shard reads (the stager's loader reads them too) -> the run's errors."""
        try:
            yield
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

    # ---- shard versions --------------------------------------------------------------------------------
    def _publish(self) -> None:
        """Rank 0 after every change of the shard versions; the others learn that they must fetch."""
        if self.rank == 0:
            if self.board is not None:
                self.board.publish.remote(self._version, dict(self.refs))
            self._have = self._version

    def _changed(self) -> None:
        self._version += 1
        self._publish()

    def _current_refs(self) -> dict[str, Any]:
        if self._have < self._version:
            self._have, self.refs = self._get(self.board.fetch.remote(self._version))
        return dict(self.refs)

    def _slice(self, num: int) -> tuple[list[int], slice]:
        sizes = split_sizes(num, self.world)
        start = sum(sizes[:self.rank])
        return sizes, slice(start, start + sizes[self.rank])

    # ---- the Backend protocol ------------------------------------------------------------------------
    def train_step(self, batch: np.ndarray, plan: UpdatePlan, snapshot: bool) -> tuple[StepStats, PendingUpdates]:
        start = time.perf_counter()
        _, mine = self._slice(batch.shape[0])
        local = batch[mine]
        loader = object_loader(self._current_refs())
        self._step_plan, self._store_waits = (plan, snapshot), []
        self.reducer.start_step()
        with self._supervised():
            stats = self.compute.train_step(local, loader, self.reducer, plan, count_trained_targets(batch))
        self.reducer.drain()
        step_s = time.perf_counter() - start
        rows = gather_rows([stats.loss, stats.wait_s, stats.forward_s, stats.backward_s, self.reducer.reduce_s,
                            step_s, float(stats.num_tokens)], self.device)
        stats.loss = sum(row[0] for row in rows)  # in rank order: the accumulation order of one worker
        stats.param_norms = dict(self.reducer.norms)
        stats.finite = all(math.isfinite(n) for norms in stats.param_norms.values() for n in norms)
        stats.num_tokens = int(batch[..., :-1].size)
        stats.workers = [worker_record(rank, dict(zip(WORKER_FIGURES, row, strict=True)))
                         for rank, row in enumerate(rows)]
        if plan.immediate:
            self._changed()
        return stats, PendingUpdates(self._store_waits)

    def _hand_off(self, name: str, grads: dict[str, torch.Tensor], norms: list[float]) -> None:
        """A shard's summed gradients: rank 0 starts its update (immediate) or stores them for update_all."""
        if self.rank != 0:
            return
        assert self._step_plan is not None
        plan, snapshot = self._step_plan
        # On CUDA one pinned-memory copy per shard and one wait, not a pageable copy and a sync per tensor. It
        # waits at once: the update call needs the values (overlapping it would need the call off this thread).
        host = self.drain.start(grads, overlap=False).wait()
        arrays = {k: g.detach().numpy() for k, g in host.items()}
        if plan.immediate:
            self.refs[name], stats = self.store.update.options(num_returns=2).remote(
                name, plan.lr, None, 1.0, snapshot, arrays)
            self._store_waits.append(stats)
        else:
            self._grads[name] = ray.put(arrays)

    def update_all(self, lr: float, clip_coef: float | None, grad_scale: float, snapshot: bool) -> PendingUpdates:
        """The gradient refs go straight into the update calls: Ray hands the store each shard's gradients."""
        pending = PendingUpdates()
        if self.rank == 0:
            for name in self.names:  # forward order: the next forward's first shards are ready first
                grads = self._grads.pop(name, None)  # a guard replay reuses the store's stashed gradients
                arrays, stats = self.store.update.options(num_returns=2).remote(name, lr, clip_coef, grad_scale,
                                                                                snapshot, grads)
                self.refs[name] = arrays
                pending.waits.append(stats)
            if self.cfg.stream.prefetch_shards != "none":
                self.prefetch.stage.remote([[self.refs[n]] for n in self.names])  # nested: Ray passes the refs
        self._changed()
        return pending

    def update_stats(self, pending: PendingUpdates) -> StoreStats:
        """One fetch: the store serves calls in order, so the last update's figures are the newest."""
        if self.rank != 0:
            return StoreStats()
        if pending.waits:
            return self._get(pending.waits)[-1]
        return self._get(self.store.stats.remote())

    def eval_losses(self, batches: np.ndarray) -> list[float]:
        """Each worker evaluates its slice of the batches; every worker gets all the losses, in order."""
        sizes, mine = self._slice(batches.shape[0])
        loader = object_loader(self._current_refs())
        with self._supervised():
            losses = self.compute.eval_losses(batches[mine], loader) if sizes[self.rank] else []
        return gather_chunks(losses, sizes, self.device)

    def restore(self) -> None:
        if self.rank == 0:
            self._get(self.store.restore.remote())
            self.refs = {n: self.store.get_shard.remote(n) for n in self.names}
        self._changed()

    def commit(self) -> None:
        if self.rank == 0:
            self._get(self.store.commit.remote())

    def checkpoint(self, step: int, state: dict[str, Any]) -> Path:
        ckpt = self.paths.active / CHECKPOINTS / checkpoint_dir_name(step)
        if self.rank == 0:
            self._get(self.store.checkpoint.remote(str(ckpt), state, str(self.paths.active),
                                                   self.cfg.checkpoint.keep_last_checkpoints,
                                                   self.last_flushed_step()))
        return ckpt

    def flush(self, step: int) -> None:
        if self.rank == 0:
            # The run files this worker writes (remote durable dir: the log in its active dir) go with the call:
            # the flusher lives beside the store, perhaps on another node.
            files = {n: (self.paths.log_dir / n).read_bytes() for n in self.paths.mirrored_files
                     if (self.paths.log_dir / n).is_file()}
            self._flushes.append(self.flusher.flush.remote(step, files if self.paths.mirrored_files else None))

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
        return encode_rng(torch.get_rng_state())

    def set_rng_state(self, state: str) -> None:
        torch.set_rng_state(decode_rng(state))

    def emit(self, record: dict[str, Any], event: str = "step") -> None:
        if self.rank == 0:
            self.flusher.emit.remote(record, event)  # off the workers' critical path

    def close(self) -> None:
        """Rank 0 waits for the store's writes and ends the helper actors (their names are free again)."""
        if self.rank != 0:
            return
        with contextlib.suppress(Exception):
            ray.get(self.store.drain.remote(), timeout=120)
        end_actors(self.cfg, self.run_name, self.actors)


def worker_record(rank: int, figures: dict[str, float]) -> dict[str, Any]:
    """One worker's figures of a step, as its "worker" log record carries them."""
    step_s = figures["step_time_s"]
    return {"worker": rank, "tokens_per_s": figures["tokens"] / step_s if step_s > 0 else 0.0,
            "step_time_s": step_s, "reduce_s": figures["reduce_s"], "wait_s": figures["wait_s"],
            "forward_s": figures["forward_s"], "backward_s": figures["backward_s"]}


def end_actors(cfg: RunConfig, run_name: str, actors: dict[str, Any], timeout: float = 10.0) -> None:
    """Kill a run's helper actors and wait until their names are free (a restart names new ones alike)."""
    for handle in actors.values():
        with contextlib.suppress(Exception):
            ray.kill(handle)
    deadline = time.time() + timeout
    for role in actors:
        while time.time() < deadline:
            try:
                ray.get_actor(actor_name(run_name, role), namespace=cfg.ray.namespace)
            except ValueError:
                break
            time.sleep(0.05)
