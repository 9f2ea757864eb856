"""The run's helper actors (store, prefetch, flusher, ref board): started with their Ray options, found by name."""

from __future__ import annotations

import sys
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.board import RefBoardActor
from actors.flusher import CheckpointFlusherActor
from actors.prefetch import PrefetchActor
from actors.store import ShardStoreActor
from perkunas_ray.config import RunConfig
from perkunas_ray.stream.actor_options import HELPER_ROLES, actor_name, actor_options, helper_resources
from perkunas_ray.stream.build import TrainRun


def build_actors(run: TrainRun, node_id: str = "") -> dict[str, Any]:
    """Apply Ray options here (the classes in actors/ stay plain); role -> actor handle.

    The shard store goes where ray.helper_resources put it, or (none given) to `node_id`, the driver's node, so
    the host tier stays on the CPU head; the other helpers follow the store to its node. The store opens the
    checkpoint on its own node (from the durable dir), not the copy rank 0 fetched on this one."""
    cfg, paths = run.cfg, run.paths
    if cfg.ray.helper_resources or not node_id:
        first: dict[str, Any] = {}
    else:
        first = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=True)}

    def start(cls: type, role: str, placement: dict[str, Any], *args: Any) -> Any:
        options = {**actor_options(cfg, run.name, role), **placement}
        extra = helper_resources(cfg, role)
        if extra:
            options["resources"] = extra
        return ray.remote(cls).options(**options).remote(*args)

    store = start(ShardStoreActor, "shard_store", first, cfg, paths.durable, str(paths.active),
                  int(run.state["step"]))
    # soft=False: the flusher must share the store's disk (it publishes the store's active checkpoints)
    beside = {"scheduling_strategy": NodeAffinitySchedulingStrategy(store_node(store, cfg), soft=False)}
    actors = {
        "shard_store": store,
        "prefetch": start(PrefetchActor, "prefetch", beside, cfg.stream.prefetch_window),
        "checkpoint_flusher": start(CheckpointFlusherActor, "checkpoint_flusher", beside, paths.durable,
                                    str(paths.active), cfg.checkpoint.keep_last_checkpoints, paths.mirrored_files,
                                    run.name),
    }
    if cfg.ray.num_workers > 1:  # every Ray process wakes 100 times a second: on a small machine, each one
        actors["ref_board"] = start(RefBoardActor, "ref_board", beside)  # more costs the compute threads ~1%
    return actors


def store_node(store: Any, cfg: RunConfig, warn_every_s: float = 60.0) -> str:
    """The node the shard store was placed on (waits for one that offers ray.helper_resources, saying so on
    stderr while none does: a node of the host tier may be starting or coming back)."""
    ref = store.node_id.remote()
    waited = 0.0
    while not ray.wait([ref], timeout=warn_every_s)[0]:
        waited += warn_every_s
        print(f"perkunas: the shard store has waited {waited:.0f} s for a node with resources "
              f"{cfg.ray.helper_resources} "
              f"(ray.helper_resources); start one with `ray start --address=... --resources=...`",
              file=sys.stderr, flush=True)
    return str(ray.get(ref))


def find_actors(cfg: RunConfig, run_name: str) -> dict[str, Any]:
    """The run's helper actors alive now, by their names (role -> handle)."""
    found = {}
    for role in HELPER_ROLES:
        try:
            found[role] = ray.get_actor(actor_name(run_name, role), namespace=cfg.ray.namespace)
        except ValueError:
            continue
    return found
