"""The app builder for `serve run` / `serve deploy` / `perkunas serve`: registry -> engines + router + ingress
(or, for one model on one replica, one deployment that is both: `ingress.mode`).

    import_path: deployments.app:build_app
    args: {registry: path/to/model_registry.yaml, api_tokens: "dev:dev-token"}

Args (see perkunas_ray.kvserve.registry.APP_ARGS): registry (a file, relative to the working dir) or
model_dir (one-model shortcut); optional api_tokens ("name:token,..."; default KV_API_TOKENS, then the
registry's) and overrides of the registry: router (kv | pow2), imbalance_threshold, max_body_bytes,
ingress_num_cpus.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from deployments.engine_ingress import KVServeEngineIngress
from deployments.engine_server import EngineServer
from deployments.ingress import KVServeIngress
from deployments.rate_board import RATE_BOARD_NAME, RateBoard
from perkunas_ray.kvserve.registry import Registry, registry_from_app_args
from perkunas_ray.kvserve.serve_options import (
    combined_options,
    engine_options,
    ingress_options,
    request_router_options,
)
from perkunas_ray.kvserve.service import check_engine_available

KV_ROUTER_CLASS = "deployments.router:KVAwareRequestRouter"


def build_app(args: dict[str, Any] | None = None) -> Any:
    """Build the Serve application from `serve run`'s args."""
    args = dict(args or {})
    return build_registry_app(registry_from_app_args(args), args.get("api_tokens"))


def build_registry_app(registry: Registry, api_tokens: Any = None, router_class: str | None = None) -> Any:
    """Fails here (deploy time) when a model's engine cannot run on this machine. `router_class`: another Serve
    request router for the engines, with its own defaults (the routing bench's Ray Serve LLM side)."""
    for spec in registry.models.values():
        check_engine_available(spec)
    if registry.combined:  # one model, one replica: the routes in the engine replica (IngressConfig.mode)
        (spec,) = registry.models.values()
        return serve.deployment(serve.ingress()(KVServeEngineIngress)).options(**combined_options(spec)).bind(
            registry, api_tokens)
    engines = {}
    for model_id, spec in registry.models.items():
        options = request_router_options(spec, registry.router, KV_ROUTER_CLASS)
        if router_class is not None:
            options.update(request_router_class=router_class, request_router_kwargs={})
        router = RequestRouterConfig(**options)
        engines[model_id] = serve.deployment(EngineServer).options(
            **engine_options(spec), request_router_config=router).bind(spec)
    ingress = serve.deployment(serve.ingress()(KVServeIngress)).options(**ingress_options(registry.ingress))
    board = None
    if registry.ingress.num_replicas > 1 and registry.limits.requests_per_minute:
        board = serve.deployment(RateBoard).options(name=RATE_BOARD_NAME, num_replicas=1,
                                                    ray_actor_options={"num_cpus": 0}).bind(registry.limits)
    return ingress.bind(engines, registry, api_tokens, board)
