"""The app builder for `serve run` / `serve deploy` / `perkunas serve`: registry -> engines + router + ingress.

    import_path: deployments.app:build_app
    args: {registry: path/to/model_registry.yaml, api_tokens: "dev:dev-token"}

Args: registry (path) or model_dir (one-model shortcut); optional api_tokens ("name:token,..."; default
KV_API_TOKENS, then the registry's), router (kv | pow2: overrides the registry), max_body_bytes,
ingress_num_cpus.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from perkunas_ray.errors import ConfigError
from perkunas_ray.kvserve.registry import (
    ROUTER_POLICIES,
    ModelSpec,
    Registry,
    RouterConfig,
    load_registry,
    single_model_registry,
)
from perkunas_ray.kvserve.service import check_engine_available

KV_ROUTER_CLASS = "deployments.router:KVAwareRequestRouter"
ARG_KEYS = ("registry", "model_dir", "api_tokens", "router", "max_body_bytes", "ingress_num_cpus", "imbalance_threshold")


def deployment_name(model_id: str) -> str:
    return "engine_" + re.sub(r"[^A-Za-z0-9_-]", "_", model_id)


def engine_deployment(spec: ModelSpec, router: RouterConfig) -> Any:
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from deployments.engine_server import EngineServer

    router_kwargs: dict[str, Any] = {"request_routing_stats_period_s": router.routing_stats_period_s,
                                     "request_routing_stats_timeout_s": max(5.0, router.routing_stats_period_s * 10)}
    if router.policy == "kv":
        router_kwargs.update(request_router_class=KV_ROUTER_CLASS, request_router_kwargs={
            "imbalance_threshold": router.imbalance_threshold, "optimistic_ttl_s": router.optimistic_ttl_s,
            "block_size": spec.kv_policy.block_size})
    options: dict[str, Any] = {
        "name": deployment_name(spec.model_id), "max_ongoing_requests": spec.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": spec.num_cpus, "num_gpus": spec.resolved_num_gpus},
        "request_router_config": RequestRouterConfig(**router_kwargs),
        "health_check_period_s": 5, "graceful_shutdown_timeout_s": 5,
    }
    if spec.autoscaling_config is not None:
        options["autoscaling_config"] = spec.autoscaling_config
    else:
        options["num_replicas"] = spec.num_replicas
    return serve.deployment(EngineServer).options(**options)


def ingress_deployment(num_cpus: float) -> Any:
    from ray import serve

    from deployments.ingress import KVServeIngress

    return serve.deployment(serve.ingress()(KVServeIngress)).options(
        name="kvserve_ingress", num_replicas=1, max_ongoing_requests=1000,
        ray_actor_options={"num_cpus": num_cpus}, graceful_shutdown_timeout_s=5)


def _find(path: str) -> Path:
    """A relative registry path: from the working dir, else from the checkout (where serve_config.yaml points)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    import perkunas_ray

    in_checkout = Path(perkunas_ray.__file__).resolve().parents[1] / candidate
    return in_checkout if in_checkout.exists() else candidate


def resolve_registry(args: dict[str, Any]) -> Registry:
    unknown = sorted(set(args) - set(ARG_KEYS))
    if unknown:
        raise ConfigError(f"build_app: unknown arg {unknown[0]!r} (known: {', '.join(ARG_KEYS)})")
    if bool(args.get("registry")) == bool(args.get("model_dir")):
        raise ConfigError("build_app: give exactly one of registry (a JSON/YAML file) or model_dir (a run dir)")
    registry = load_registry(_find(args["registry"])) if args.get("registry") else \
        single_model_registry(args["model_dir"])
    if args.get("router") is not None:
        if args["router"] not in ROUTER_POLICIES:
            raise ConfigError(f"build_app: router must be one of {', '.join(ROUTER_POLICIES)}, got {args['router']!r}")
        registry.router.policy = args["router"]
    if args.get("imbalance_threshold") is not None:
        registry.router.imbalance_threshold = int(args["imbalance_threshold"])
    registry.router.validate()
    if args.get("max_body_bytes") is not None:
        registry.max_body_bytes = int(args["max_body_bytes"])
    return registry


def build_app(args: dict[str, Any] | None = None) -> Any:
    """Build the Serve application; fails here (deploy time) when a model's engine cannot run on this machine."""
    args = dict(args or {})
    registry = resolve_registry(args)
    for spec in registry.models.values():
        check_engine_available(spec)
    engines = {model_id: engine_deployment(spec, registry.router).bind(spec)
               for model_id, spec in registry.models.items()}
    ingress = ingress_deployment(float(args.get("ingress_num_cpus", 0) or 0))
    return ingress.bind(engines, registry, args.get("api_tokens"), args.get("max_body_bytes"))
