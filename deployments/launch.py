"""Start a local Ray + Serve and deploy the kvserve app (used by `perkunas serve`, the benchmark and tests)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray import serve

from deployments.app import build_registry_app
from perkunas_ray.errors import ConfigError
from perkunas_ray.kvserve.registry import Registry

APP_NAME = "kvserve"
# Serve's timers that wake its processes ten times a second: the controller's loop (0.1 s) and each replica's and
# proxy's metrics export (100 ms). On a small machine every wake-up preempts an engine thread mid-step; at 0.5 s and
# 1 s an idle local Serve app used 6.7% of a core instead of 10.8% (bench serve's "Ray tax" row shows the effect on
# the engine). A cluster started with `ray start` takes them from that command's environment; with cores to spare,
# Serve's defaults cost nothing measurable.
QUIET_SERVE = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000"}
# Ray's log monitor re-lists the session's log directory ten times a second while it holds under 1,000 files; with
# that threshold at 0 it does so every 5 s (LOG_NAME_UPDATE_INTERVAL_S) and still forwards new lines within 0.1 s:
# idle, it then took 0.67% of a core instead of 1.40 (two runs each). Ray's other wake-ups (the 100-a-second signal
# check in every worker's main thread, the raylet's and GCS's gRPC polling) have no setting; slowing the raylet's
# resource report, GC check and memory monitor to 1 s cut nothing measurable.
QUIET_RAY = {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0", "LOG_NAME_UPDATE_INTERVAL_S": "5"}
# Serve's controller kills a proxy that has not answered its readiness check 5 s after it was created, and then
# serve.start fails ("killed by ray.kill"): on 2 cores busy with training, a proxy's worker took longer than that
# to start and import Serve. 30 s stays inside serve.start's own 60 s wait for the proxy.
PATIENT_SERVE = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def direct_ingress_environment(port: int) -> dict[str, str]:
    """Serve's direct ingress (Ray 2.60): the ingress replica serves HTTP itself, on `port` (the range holds one
    port: one ingress replica), so no request or stream message crosses Serve's proxy; a replica going away
    drains for 1 s, not Serve's 30 (a load balancer's grace, which a single local port does not have)."""
    return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


def local_ray_environment() -> dict[str, str]:
    """What the processes of a Ray started here for serving need in their environment (the caller's own
    settings win). Ray starts its workers at a niceness 15 above the driver's; here the replicas, the ingress and
    the proxy are the server, and that far down any other load on the machine starves them."""
    env = {"RAY_worker_niceness": "0", **QUIET_SERVE, **QUIET_RAY, **PATIENT_SERVE}
    return {name: os.environ.get(name, value) for name, value in env.items()}


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ while Ray starts its processes (they inherit it), then as it was."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def joins_cluster() -> bool:
    """Whether start_local joins a running cluster (RAY_ADDRESS names one) rather than starting a local Ray."""
    return ray.is_initialized() or os.environ.get("RAY_ADDRESS", "local") not in ("", "local")


def start_local(host: str = "127.0.0.1", port: int = 8000, num_cpus: int | None = None,
                include_dashboard: bool = False, metrics_export_port: int | None = None,
                direct_ingress: bool = False) -> str:
    """ray.init (unless already connected) and serve.start on host:port (Prometheus metrics on
    `metrics_export_port` when given). A new local Ray instance, unless RAY_ADDRESS names a cluster to join (then
    `num_cpus` is the cluster's business): Ray's default would join any cluster `ray start` left on this machine.
    `direct_ingress`: the one ingress replica listens on host:port itself and Serve's proxy on a free port (see
    `direct_ingress_environment`); it needs the local Ray started here. Returns the URL of Serve's proxy."""
    if not ray.is_initialized():
        env = local_ray_environment()
        extra = {"_metrics_export_port": metrics_export_port} if metrics_export_port else {}
        address = os.environ.get("RAY_ADDRESS", "")
        if joins_cluster():
            if direct_ingress:
                raise ConfigError(f"direct ingress needs a Ray started by this command; RAY_ADDRESS={address} "
                                  "names a cluster (start it with RAY_SERVE_ENABLE_DIRECT_INGRESS=1 instead)")
            ray.init(address=address, log_to_driver=False)
        else:
            if direct_ingress:
                env.update(direct_ingress_environment(port))
            with environment(env):
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=include_dashboard,
                         log_to_driver=False, **extra)
    elif direct_ingress:
        raise ConfigError("direct ingress needs a Ray started by this command; this process is already connected")
    proxy_port = free_port(host) if direct_ingress else port
    serve.start(http_options={"host": host, "port": proxy_port})
    return f"http://{host}:{proxy_port}"


def deploy(registry: Registry, api_tokens: Any = None, name: str = APP_NAME, route_prefix: str = "/") -> Any:
    """Build and run the app (blocks until it is healthy); returns the ingress handle."""
    return serve.run(build_registry_app(registry, api_tokens), name=name, route_prefix=route_prefix)


@contextlib.contextmanager
def serving(registry: Registry, api_tokens: Any = None, num_cpus: int | None = None,
            metrics_export_port: int | None = None, direct_ingress: bool = False) -> Iterator[str]:
    """A local Ray + Serve on a free loopback port with the registry's app deployed: yields its base URL, shuts
    Serve and Ray down at the end (benchmarks and tests)."""
    port = free_port()
    start_local("127.0.0.1", port, num_cpus=num_cpus, metrics_export_port=metrics_export_port,
                direct_ingress=direct_ingress)
    try:
        deploy(registry, api_tokens)
        yield f"http://127.0.0.1:{port}"
    finally:
        shutdown()


def undeploy(name: str = APP_NAME, timeout_s: float = 60.0) -> None:
    serve.delete(name)
    deadline = time.time() + timeout_s
    while time.time() < deadline and name in serve.status().applications:
        time.sleep(0.2)


def shutdown() -> None:
    serve.shutdown()
    ray.shutdown()
