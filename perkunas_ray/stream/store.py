"""The shard store's core: fp32 master weights and optimizer state per shard, updated where they live.

The store is the host tier of the runtime. Gradients arrive per shard (from the compute side's
backward); the optimizer step runs here, per shard, so global clipping only needs the norm before
the first update and early shards can be updated (and read by the next forward) while later ones wait.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from perkunas_ray.checkpoint.format import (
    MANIFEST,
    STATE,
    load_shard,
    prune_checkpoints,
    publish_manifest,
    save_tensors,
    write_json_atomic,
)
from perkunas_ray.config import RunConfig
from perkunas_ray.errors import CheckpointError
from perkunas_ray.model.init import init_tensor
from perkunas_ray.model.shards import shard_parameter_shapes, stream_shard_specs
from perkunas_ray.stream.interface import StoreStats
from perkunas_ray.stream.optimizers import (
    build_optimizer,
    load_optimizer_state,
    optimizer_state_tensors,
    set_lr,
)
from perkunas_ray.stream.store_step import shard_clip_coefficient, step_tasks
from perkunas_ray.stream.store_threads import UpdatePool, resolve_store_threads
from perkunas_ray.stream.writer import WriteBehind


def init_shard(cfg: RunConfig, name: str, seed: int) -> dict[str, torch.Tensor]:
    """A shard's initial parameters, without building anything else of the model."""
    spec = next(s for s in stream_shard_specs(cfg.model) if s.name == name)
    return {n: init_tensor(cfg.model, n, shape, seed) for n, shape in shard_parameter_shapes(cfg.model, spec).items()}


class ShardStore:
    def __init__(self, cfg: RunConfig, shards: dict[str, dict[str, torch.Tensor]],
                 optim: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
        self.cfg = cfg
        self.names = [s.name for s in stream_shard_specs(cfg.model)]
        missing = [n for n in self.names if n not in shards]
        if missing:
            raise CheckpointError(f"shard store: no parameters for shard(s) {', '.join(missing)}")
        self.params: dict[str, dict[str, nn.Parameter]] = {}
        self.optims: dict[str, torch.optim.Optimizer] = {}
        for spec in stream_shard_specs(cfg.model):
            expected = shard_parameter_shapes(cfg.model, spec)
            given = shards[spec.name]
            for pname, shape in expected.items():
                if pname not in given or tuple(given[pname].shape) != shape:
                    got = tuple(given[pname].shape) if pname in given else "nothing"
                    raise CheckpointError(f"shard {spec.name}: parameter {pname} should have shape {shape}, "
                                          f"found {got}; the checkpoint does not match model config")
            params = {n: nn.Parameter(given[n].detach().to(torch.float32).clone()) for n in expected}
            self.params[spec.name] = params
            self.optims[spec.name] = build_optimizer(params.items(), cfg.train)
            if optim and optim.get(spec.name):
                load_optimizer_state(self.optims[spec.name], params, optim[spec.name])
        self.versions = dict.fromkeys(self.names, 0)
        self.grads: dict[str, dict[str, torch.Tensor]] = {}
        self.snapshots: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
        self.writer = WriteBehind(cfg.stream.max_pending_shard_writes, cfg.stream.async_shard_writes)
        # masters on a device (the resident path) update by kernels queued on one stream: more host threads add nothing
        on_host = all(p.device.type == "cpu" for params in self.params.values() for p in params.values())
        self.pool = UpdatePool(resolve_store_threads(cfg.stream.store_threads, cfg.train.device) if on_host else 1)
        self.update_s = 0.0

    @classmethod
    def from_checkpoint(cls, cfg: RunConfig, ckpt_dir: Path, verify: bool = True) -> ShardStore:
        """`verify=False` when this process has just verified `ckpt_dir` (open_run did): hash the files once."""
        names = [s.name for s in stream_shard_specs(cfg.model)]
        shards = {n: load_shard(ckpt_dir, n, "shards", verify) for n in names}
        optim = {n: load_shard(ckpt_dir, n, "optim", verify) for n in names}
        return cls(cfg, shards, optim)

    # ---- reads -------------------------------------------------------------------------------------
    def shard_tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self.params[name].items()}

    def shard_arrays(self, name: str) -> dict[str, np.ndarray]:
        """numpy views (the Ray shell returns these; serialisation copies them once into the object store)."""
        return {k: p.detach().numpy() for k, p in self.params[name].items()}

    # ---- updates -------------------------------------------------------------------------------------
    def put_grads(self, name: str, grads: dict[str, Any]) -> None:
        self.grads[name] = {k: (torch.from_numpy(np.array(v, copy=True)) if isinstance(v, np.ndarray) else v)
                            for k, v in grads.items()}

    def update(self, name: str, lr: float, clip_coef: float | None = None, grad_scale: float = 1.0,
               snapshot: bool = False) -> int:
        """One optimizer step of shard `name` with its stashed gradients.

        clip_coef: the global clipping coefficient (already clamped to 1), or None for this config's
        own mode (shard: clip by this shard's norm; none: no clipping). grad_scale: guard replay scale.
        """
        start = time.perf_counter()
        t = self.cfg.train
        params, opt = self.params[name], self.optims[name]
        if snapshot and name not in self.snapshots:
            self.snapshots[name] = ({k: p.detach().clone() for k, p in params.items()},
                                    copy.deepcopy(opt.state_dict()))
        grads = self.grads.get(name)
        if grads is None:
            raise RuntimeError(f"shard store: no gradients stashed for {name}")
        # the tasks scale the gradients in place: a guarded step keeps the stashed ones for its replays
        step_grads = {p: grads[k].clone() if snapshot else grads[k] for k, p in params.items()}
        coef = None
        if clip_coef is not None:
            coef = torch.tensor(clip_coef, dtype=torch.float32)
        elif t.grad_clip_mode == "shard" and t.max_grad_norm > 0:  # as clip_grad_norm_ computes it
            ordered = list(step_grads.values())
            norms = self.pool.map(lambda g: torch.linalg.vector_norm(g, 2.0), ordered)
            coef = shard_clip_coefficient(norms, t.max_grad_norm)
        set_lr(opt, lr)
        self.pool.run(step_tasks(opt, step_grads, coef, grad_scale))
        if not snapshot:
            self.grads.pop(name, None)
        self.versions[name] += 1
        self.update_s += time.perf_counter() - start
        return self.versions[name]

    def restore(self, names: list[str] | None = None) -> None:
        """Back to the versions before this step's updates (guarded replay)."""
        for name in names or list(self.snapshots):
            if name not in self.snapshots:
                continue
            saved_params, saved_opt = self.snapshots[name]
            with torch.no_grad():
                for k, p in self.params[name].items():
                    p.copy_(saved_params[k])
            self.optims[name].load_state_dict(copy.deepcopy(saved_opt))
            self.versions[name] -= 1

    def commit(self) -> None:
        """Accept this step's updates: drop snapshots and stashed gradients."""
        self.snapshots.clear()
        self.grads.clear()

    # ---- checkpoints ---------------------------------------------------------------------------------
    def state_tensors(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = {k: p.detach().clone() for k, p in self.params[name].items()}
        names = {p: k for k, p in self.params[name].items()}
        return params, optimizer_state_tensors(self.optims[name], names)

    def checkpoint(self, ckpt_dir: Path, state: dict[str, Any], prune_root: Path | None = None,
                   keep: int = 0, last_flushed_step: int | None = None) -> None:
        """Write a checkpoint in the run-dir format, shard by shard through the writer; manifest last.
        Keep-last-`keep` pruning of `prune_root` spares steps after `last_flushed_step` (still to be flushed)."""
        ckpt_dir = Path(ckpt_dir)
        (ckpt_dir / MANIFEST).unlink(missing_ok=True)
        for name in self.names:
            params, optim = self.state_tensors(name)
            self.writer.submit(lambda n=name, p=params: save_tensors(ckpt_dir / "shards" / f"{n}.safetensors", p))
            self.writer.submit(lambda n=name, o=optim: save_tensors(ckpt_dir / "optim" / f"{n}.safetensors", o))

        def finish() -> None:
            write_json_atomic(ckpt_dir / STATE, state)
            publish_manifest(ckpt_dir, step=int(state["step"]))
            if prune_root is not None and keep > 0:
                prune_checkpoints(prune_root, keep, last_flushed_step)

        self.writer.submit(finish)

    def stats(self) -> StoreStats:
        return StoreStats(pending_writes=self.writer.pending, write_s=self.writer.write_s,
                          update_s=self.update_s, num_writes=self.writer.num_writes)

    def drain(self) -> None:
        self.writer.drain()

    def close(self) -> None:
        self.writer.close()
        self.pool.close()
