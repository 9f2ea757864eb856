"""The run's helper actors (store, prefetch, flusher, ref board): started with their Ray options, found by name."""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.board import RefBoardActor
from actors.flusher import CheckpointFlusherActor
from actors.prefetch import PrefetchActor
from actors.store import ShardStoreActor
from perkunas_ray.config import RunConfig
from perkunas_ray.stream.actor_options import HELPER_ROLES, actor_name, actor_options
from perkunas_ray.stream.build import TrainRun


def build_actors(run: TrainRun, node_id: str = "") -> dict[str, Any]:
    """Apply Ray options here (the classes in actors/ stay plain); role -> actor handle. `node_id`: where the
    helpers should live (the driver's node: the host tier stays on the CPU head, as before data parallelism)."""
    cfg, paths = run.cfg, run.paths
    placement = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=True)} if node_id else {}

    def start(cls: type, role: str, *args: Any) -> Any:
        return ray.remote(cls).options(**actor_options(cfg, run.name, role), **placement).remote(*args)

    actors = {
        "shard_store": start(ShardStoreActor, "shard_store", cfg, str(run.checkpoint_dir)),
        "prefetch": start(PrefetchActor, "prefetch", cfg.stream.prefetch_window),
        "checkpoint_flusher": start(CheckpointFlusherActor, "checkpoint_flusher", paths.durable, str(paths.active),
                                    cfg.checkpoint.keep_last_checkpoints, paths.mirrored_files, run.name),
    }
    if cfg.ray.num_workers > 1:  # every Ray process wakes 100 times a second: on a small machine, each one
        actors["ref_board"] = start(RefBoardActor, "ref_board")  # more costs the compute threads ~1%
    return actors


def find_actors(cfg: RunConfig, run_name: str) -> dict[str, Any]:
    """The run's helper actors alive now, by their names (role -> handle)."""
    found = {}
    for role in HELPER_ROLES:
        try:
            found[role] = ray.get_actor(actor_name(run_name, role), namespace=cfg.ray.namespace)
        except ValueError:
            continue
    return found
