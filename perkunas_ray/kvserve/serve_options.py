"""Ray Serve options of the engine and ingress deployments, from the registry (plain dicts the shells apply)."""

from __future__ import annotations

import re
from typing import Any

from perkunas_ray.kvserve.registry import IngressConfig, ModelSpec, RouterConfig

INGRESS_NAME = "kvserve_ingress"
# Serve slots of an ingress replica past its admission limit (kvserve/admission.py): Serve's proxy then never
# rejects or queues a request the app would take (its rejection is plain text), and /health, /v1/models and the
# refused requests themselves still get through while the generation routes are full.
ADMISSION_HEADROOM = 64


def deployment_name(model_id: str) -> str:
    return "engine_" + re.sub(r"[^A-Za-z0-9_-]", "_", model_id)


def request_router_options(spec: ModelSpec, router: RouterConfig, kv_router_class: str) -> dict[str, Any]:
    """Serve's RequestRouterConfig fields: our KV-aware router (`kv_router_class`) or Serve's default."""
    options: dict[str, Any] = {"request_routing_stats_period_s": router.routing_stats_period_s,
                               "request_routing_stats_timeout_s": max(5.0, router.routing_stats_period_s * 10)}
    if router.policy == "kv":
        options.update(request_router_class=kv_router_class, request_router_kwargs={
            "imbalance_threshold": router.imbalance_threshold, "optimistic_ttl_s": router.optimistic_ttl_s,
            "block_size": spec.kv_policy.block_size})
    return options


def engine_options(spec: ModelSpec) -> dict[str, Any]:
    """`serve.deployment(...).options(...)` keywords of one model's engine deployment (its router aside)."""
    options: dict[str, Any] = {
        "name": deployment_name(spec.model_id), "max_ongoing_requests": spec.max_ongoing_requests,
        "max_queued_requests": spec.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": spec.retry_after_s},
        "ray_actor_options": {"num_cpus": spec.num_cpus, "num_gpus": spec.resolved_num_gpus,
                              **({"resources": dict(spec.resources)} if spec.resources else {})},
        "health_check_period_s": spec.health_check_period_s,
        "graceful_shutdown_timeout_s": spec.graceful_shutdown_timeout_s,
    }
    if spec.autoscaling_config is not None:
        options["autoscaling_config"] = spec.autoscaling_config
    else:
        options["num_replicas"] = spec.num_replicas
    return options


def ingress_options(ingress: IngressConfig) -> dict[str, Any]:
    """`.options(...)` keywords of the HTTP ingress deployment (`mode: separate`)."""
    return {"name": INGRESS_NAME, "num_replicas": ingress.num_replicas,
            "max_ongoing_requests": ingress.max_ongoing_requests + ADMISSION_HEADROOM,
            "ray_actor_options": {"num_cpus": ingress.num_cpus,
                                  **({"resources": dict(ingress.resources)} if ingress.resources else {})},
            "graceful_shutdown_timeout_s": ingress.graceful_shutdown_timeout_s}


def combined_options(spec: ModelSpec) -> dict[str, Any]:
    """`.options(...)` keywords of the one deployment that is both ingress and engine (`mode: combined`): the
    engine's placement; its queue limit is the app's admission (max_ongoing_requests + max_queued_requests).

    Its routes run on the replica's own event loop, where Serve's HTTP server runs (Serve's throughput-optimized
    setting), not on a second loop in a second thread: each SSE message would otherwise cross between the two
    loops. The engine steps on its torch thread either way. Streamed, the replica's HTTP work went from 0.19-0.25
    to 0.13-0.15 ms of CPU a token at 4 streams and from 0.15 to 0.11 at 16, and its torch thread's share of the
    time from 69% to 73% (two alternating runs each); the price is that the constructor (the engine's load) holds
    that loop while it runs, before the replica takes requests."""
    options = engine_options(spec)
    limit = spec.max_ongoing_requests + max(0, spec.max_queued_requests)
    options.update(name=INGRESS_NAME, max_ongoing_requests=limit + ADMISSION_HEADROOM, max_queued_requests=-1)
    del options["backpressure_config"]
    options["ray_actor_options"]["runtime_env"] = {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}}
    return options
