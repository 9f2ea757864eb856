"""The app builder for `serve run` / `serve deploy` / `perkunas serve`: registry -> engines + router + ingress.

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

from deployments.engine_server import EngineServer
from deployments.ingress import KVServeIngress
from perkunas_ray.kvserve.registry import Registry, registry_from_app_args
from perkunas_ray.kvserve.serve_options import engine_options, ingress_options, request_router_options
from perkunas_ray.kvserve.service import check_engine_available

KV_ROUTER_CLASS = "deployments.router:KVAwareRequestRouter"


def build_app(args: dict[str, Any] | None = None) -> Any:
    """Build the Serve application from `serve run`'s args."""
    args = dict(args or {})
    return build_registry_app(registry_from_app_args(args), args.get("api_tokens"))


def build_registry_app(registry: Registry, api_tokens: Any = None) -> Any:
    """Fails here (deploy time) when a model's engine cannot run on this machine."""
    for spec in registry.models.values():
        check_engine_available(spec)
    engines = {}
    for model_id, spec in registry.models.items():
        router = RequestRouterConfig(**request_router_options(spec, registry.router, KV_ROUTER_CLASS))
        engines[model_id] = serve.deployment(EngineServer).options(
            **engine_options(spec), request_router_config=router).bind(spec)
    ingress = serve.deployment(serve.ingress()(KVServeIngress)).options(**ingress_options(registry.ingress))
    return ingress.bind(engines, registry, api_tokens)
