"""The Ray backend factory: builds a run's four named actors with their options from config.

    ShardStoreActor --shard versions (ObjectRefs)--> PrefetchActor / ComputeActor --grads--> ShardStoreActor
    CheckpointFlusherActor: active checkpoint -> durable dir; the run's training gauges

The entry points pass `ray_backend` to perkunas_ray.stream.build.train; the backend and its
supervision are perkunas_ray.stream.ray_backend.RayBackend.
"""

from __future__ import annotations

from typing import Any

import ray

from actors.compute import ComputeActor
from actors.flusher import CheckpointFlusherActor
from actors.prefetch import PrefetchActor
from actors.store import ShardStoreActor
from perkunas_ray.stream.actor_options import actor_options
from perkunas_ray.stream.build import TrainRun
from perkunas_ray.stream.ray_backend import RayBackend


def build_actors(run: TrainRun) -> dict[str, Any]:
    """Apply Ray options here (the classes in actors/ stay plain); role -> actor handle."""
    cfg, paths = run.cfg, run.paths
    gpus = ray.cluster_resources().get("GPU", 0)

    def start(cls: type, role: str, *args: Any) -> Any:
        return ray.remote(cls).options(**actor_options(cfg, run.name, role, gpus)).remote(*args)

    store = start(ShardStoreActor, "shard_store", cfg, str(run.checkpoint_dir))
    return {
        "shard_store": store,
        "compute": start(ComputeActor, "compute", cfg, store),
        "prefetch": start(PrefetchActor, "prefetch", cfg.stream.prefetch_window),
        "checkpoint_flusher": start(CheckpointFlusherActor, "checkpoint_flusher", paths.durable, str(paths.active),
                                    cfg.checkpoint.keep_last_checkpoints, paths.mirrored_files, run.name),
    }


def ray_backend(run: TrainRun) -> RayBackend:
    """The run's backend on the connected Ray cluster, resuming from its checkpoint."""
    return RayBackend(run.cfg, build_actors(run), run.paths, int(run.state["step"]), run.name)
