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
    """deployments.app.build_registry_app, with Ray Serve LLM's router as a third choice of request router."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from deployments.app import KV_ROUTER_CLASS
    from deployments.engine_server import EngineServer
    from deployments.ingress import KVServeIngress
    from perkunas_ray.kvserve.serve_options import engine_options, ingress_options, request_router_options

    engines = {}
    for model_id, spec in registry.models.items():
        options = request_router_options(spec, registry.router, KV_ROUTER_CLASS)
        if router == "affinity":  # Ray's own defaults for its kwargs, as a Ray Serve LLM user gets them
            options.update(request_router_class=AFFINITY_ROUTER_CLASS, request_router_kwargs={})
        engines[model_id] = serve.deployment(EngineServer).options(
            **engine_options(spec), request_router_config=RequestRouterConfig(**options)).bind(spec)
    ingress = serve.deployment(serve.ingress()(KVServeIngress)).options(**ingress_options(registry.ingress))
    return ingress.bind(engines, registry, api_tokens)
