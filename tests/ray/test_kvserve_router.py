"""KV-aware router vs Serve's default router, 2 replicas, a prefix-repetition workload: aggregate hit rates;
and the router learning cache contents from the replicas' reported KV events alone."""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def serve_url(tmp_path_factory):
    from deployments import launch
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    root = tmp_path_factory.mktemp("routing")
    run = make_tiny_run_dir(root / "tiny")
    port = launch.free_port()
    launch.start_local("127.0.0.1", port, num_cpus=2)
    try:
        yield f"http://127.0.0.1:{port}", run, root
    finally:
        launch.shutdown()


def test_kv_router_beats_default_on_prefix_hits(serve_url) -> None:
    from perkunas_ray.bench.kvserve import compare

    url, run, root = serve_url
    results = compare(url, run, replicas=2, concurrency=4, num_prefixes=16, repeats=3, num_random=0, max_tokens=4,
                      num_blocks=512)
    single, default, kv = (results[name]["prefix"]["prefix_hit_rate"] for name in ("single", "default", "kv"))
    print(f"\nprefix-hit rate: 1 replica {single:.3f}; 2 replicas: default router {default:.3f} "
          f"(x{default / single:.2f}), kv router {kv:.3f} (x{kv / single:.2f})")
    assert single > 0.3
    assert kv > default
    assert kv >= 0.9 * single


def test_router_learns_from_replica_kv_events(serve_url) -> None:
    """With optimistic entries expiring at once, only the replicas' reported cache contents can steer repeats."""
    from deployments import launch
    from perkunas_ray.bench.kvserve import bench_registry, drive, prefix_workload

    url, run, root = serve_url
    registry = bench_registry(run, 2, 512, 16, "kv", optimistic_ttl_s=0.001, routing_stats_period_s=0.2)
    launch.deploy(registry, api_tokens="bench:bench-token")
    try:
        prompts = prefix_workload(8, 3, seed=5)
        asyncio.run(drive(url, "bench", prompts[:8], 1, 2))
        time.sleep(3)  # several routing-stats rounds: every replica has reported its new blocks
        repeats = asyncio.run(drive(url, "bench", prompts[8:], 1, 2))
    finally:
        launch.undeploy()
    cached = repeats["cached_tokens_per_request"]
    print(f"\nrepeats routed from reported KV events only: cached tokens per request {cached}")
    assert all(c > 0 for c in cached)  # random placement would miss about half of the first repeats
