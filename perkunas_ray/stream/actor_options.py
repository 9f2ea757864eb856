"""The Ray options of a run, from config: its helper actors' names and options, and each worker's resources."""

from __future__ import annotations

from typing import Any

from perkunas_ray.config import AUTO, RunConfig

# The actors a run's rank-0 worker starts beside the workers (recreated on every (re)start of the group).
HELPER_ROLES = ("shard_store", "prefetch", "checkpoint_flusher", "ref_board")


def actor_name(run_name: str, role: str) -> str:
    return f"perkunas:{run_name}:{role}"


def actor_options(cfg: RunConfig, run_name: str, role: str) -> dict[str, Any]:
    """Options for `ray.remote(cls).options(...)`: the helpers take no CPU of their own (they mostly wait) and
    are never restarted by Ray alone (a restarted store would have lost the run's state: the whole group
    restarts from the newest durable checkpoint instead)."""
    return {"name": actor_name(run_name, role), "namespace": cfg.ray.namespace, "max_restarts": 0,
            "lifetime": None, "num_cpus": 0}


def helper_resources(cfg: RunConfig, role: str) -> dict[str, float]:
    """The custom resources a helper takes: the shard store takes ray.helper_resources (they pick the host
    tier's node); the others follow the store to its node (the flusher reads the store's active checkpoint
    files there), so a node that offers the resource once holds the whole tier."""
    return dict(cfg.ray.helper_resources) if role == "shard_store" else {}


def uses_gpu(cfg: RunConfig, cluster_gpus: float) -> bool:
    device = cfg.train.device
    return device.startswith("cuda") or (device == "auto" and cluster_gpus >= 1)


def worker_resources(cfg: RunConfig, cluster_gpus: float = 0.0) -> dict[str, float]:
    """Each data-parallel worker's Ray resources: a CPU, or a GPU (then no CPU) when the run trains on CUDA, and
    ray.worker_resources (custom resources that pick the nodes the workers run on)."""
    gpu = uses_gpu(cfg, cluster_gpus)
    num_gpus, num_cpus = cfg.ray.worker_gpus, cfg.ray.worker_cpus
    return {"CPU": (0.0 if gpu else 1.0) if num_cpus == AUTO else num_cpus,
            "GPU": (1.0 if gpu else 0.0) if num_gpus == AUTO else num_gpus, **cfg.ray.worker_resources}
