"""ShardStoreActor: a thin Ray shell over perkunas_ray.stream.store.ShardStore (the host tier)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import ray

from perkunas_ray.checkpoint.cleanup import clean_stale_writes
from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.resume import local_checkpoint
from perkunas_ray.config import RunConfig
from perkunas_ray.stream.interface import StoreStats
from perkunas_ray.stream.node_check import check_paths_here, this_node
from perkunas_ray.stream.store import ShardStore
from perkunas_ray.stream.worker_process import prepare_worker_process


class ShardStoreActor:
    """Returns shard versions as numpy dicts: each lands once in the object store and is read zero-copy."""

    def __init__(self, cfg: RunConfig, durable: str, active_dir: str, step: int) -> None:
        prepare_worker_process(1)  # optimizer updates sit on the path to the next forward too
        # This node's copy of the checkpoint (the durable dir in place when it is a path; else fetched into this
        # node's active dir), after clearing what a crashed store left there: rank 0 may run on another node.
        check_paths_here(cfg, this_node(), "the shard store", data=False)
        clean_stale_writes(DurableDir(active_dir))
        self.core = ShardStore.from_checkpoint(cfg, local_checkpoint(DurableDir(durable), step, Path(active_dir)))

    def ping(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def get_shard(self, name: str) -> dict[str, np.ndarray]:
        return self.core.shard_arrays(name)

    def update(self, name: str, lr: float, clip_coef: float | None, grad_scale: float, snapshot: bool,
               grads: dict[str, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], StoreStats]:
        """Call with num_returns=2: (the new version, the store's stats). `grads`: this step's gradients of
        the shard (passed as an ObjectRef, resolved by Ray); None to reuse the stashed ones (guard replay)."""
        if grads is not None:
            self.core.put_grads(name, grads)
        self.core.update(name, lr, clip_coef, grad_scale, snapshot)
        return self.core.shard_arrays(name), self.core.stats()

    def restore(self) -> bool:
        self.core.restore()
        return True

    def commit(self) -> bool:
        self.core.commit()
        return True

    def checkpoint(self, ckpt_dir: str, state: dict[str, Any], prune_root: str, keep: int,
                   last_flushed_step: int | None) -> str:
        self.core.checkpoint(Path(ckpt_dir), state, Path(prune_root), keep, last_flushed_step)
        return ckpt_dir

    def stats(self) -> StoreStats:
        return self.core.stats()

    def drain(self) -> bool:
        self.core.drain()
        return True
