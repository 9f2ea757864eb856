"""The Ray options of a run's actors, from config: names, namespace, restarts and the compute actor's resources."""

from __future__ import annotations

from typing import Any

from perkunas_ray.config import AUTO, RunConfig


def actor_name(run_name: str, role: str) -> str:
    return f"perkunas:{run_name}:{role}"


def actor_options(cfg: RunConfig, run_name: str, role: str, cluster_gpus: float = 0.0) -> dict[str, Any]:
    """Options for `ray.remote(cls).options(...)`: the helpers take no CPU of their own (they mostly wait);
    the compute actor takes a CPU, or a GPU (then no CPU) when the run trains on CUDA."""
    options: dict[str, Any] = {"name": actor_name(run_name, role), "namespace": cfg.ray.namespace,
                               "max_restarts": cfg.ray.max_restarts, "lifetime": None, "num_cpus": 0}
    if role == "compute":
        device = cfg.train.device
        use_gpu = device.startswith("cuda") or (device == "auto" and cluster_gpus >= 1)
        num_gpus, num_cpus = cfg.ray.compute_num_gpus, cfg.ray.compute_num_cpus
        options["num_gpus"] = (1 if use_gpu else 0) if num_gpus == AUTO else num_gpus
        options["num_cpus"] = (0 if use_gpu else 1) if num_cpus == AUTO else num_cpus
    return options
