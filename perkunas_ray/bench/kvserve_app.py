"""The routing bench's deployments: its registry (model "bench" on N replicas), the app with a chosen router."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perkunas_ray.kvserve.registry import Registry, parse_registry

TOKEN = "bench-token"
AFFINITY_ROUTER_CLASS = "perkunas_ray.bench.affinity_router:TokenPrefixAffinityRouter"


def bench_registry(model_dir: str | Path, replicas: int, num_blocks: int, block_size: int, policy: str,
                   **router: Any) -> Registry:
    """The registry of one benchmark configuration: model "bench" on `replicas` replicas, `policy` router."""
    return parse_registry({"models": {"bench": {
        "source": str(model_dir), "num_replicas": replicas, "num_cpus": 0, "max_ongoing_requests": 64,
        "kv_policy": {"num_blocks": num_blocks, "block_size": block_size}}}, "router": {"policy": policy, **router}})


def build_app(registry: Registry, router: str, api_tokens: str) -> Any:
    """The kvserve app with `router` (kv, pow2: the registry's policy; affinity: Ray Serve LLM's router with Ray's
    own defaults for its kwargs, as a Ray Serve LLM user gets them)."""
    from deployments.app import build_registry_app

    return build_registry_app(registry, api_tokens, AFFINITY_ROUTER_CLASS if router == "affinity" else None)
