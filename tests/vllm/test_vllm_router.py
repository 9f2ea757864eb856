"""Two vLLM replicas behind the KV-aware router: the prefix-hit rate of one replica is kept on a shared-prefix
workload, and the router's view follows vLLM's evictions (its removed events, re-keyed to our hashes)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

NUM_BLOCKS = 100  # per replica: one replica holds the first workload; the later ones make both evict


def vllm_registry(run_dir: Path, replicas: int) -> Any:
    from perkunas_ray.kvserve.registry import parse_registry

    return parse_registry({"models": {"bench": {
        "source": str(run_dir), "engine": "vllm", "num_replicas": replicas, "num_cpus": 0,
        "max_ongoing_requests": 64, "kv_policy": {"num_blocks": NUM_BLOCKS}}}, "router": {"policy": "kv"}})


def replica_stats(url: str, want: int) -> dict[str, dict[str, Any]]:
    """/kvserve/stats of each replica (the call lands on one replica at a time)."""
    import httpx

    from perkunas_ray.bench.kvserve import TOKEN

    by_replica: dict[str, dict[str, Any]] = {}
    deadline = time.time() + 30
    while len(by_replica) < want and time.time() < deadline:
        s = httpx.get(f"{url}/kvserve/stats", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
        by_replica[s["replica"]] = s
    return by_replica


@pytest.fixture(scope="module")
def serve_url() -> Any:
    from deployments import launch

    port = launch.free_port()
    launch.start_local("127.0.0.1", port, num_cpus=2)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        launch.shutdown()


def test_two_vllm_replicas_keep_the_prefix_hit_rate_through_evictions(serve_url: str, vllm_run_dir: Path) -> None:
    from deployments import launch
    from perkunas_ray.bench.kvserve import TOKEN, drive, prefix_workload

    first = prefix_workload(12, 3, seed=3)
    rates = {}
    for name, replicas in (("single", 1), ("kv", 2)):
        launch.deploy(vllm_registry(vllm_run_dir, replicas), api_tokens=f"bench:{TOKEN}")
        try:
            asyncio.run(drive(serve_url, "bench", [f"warm up {i} {'z' * (7 * i)}" for i in range(4)], 2, 2))
            rates[name] = asyncio.run(drive(serve_url, "bench", first, 2, 4))["prefix_hit_rate"]
            if name == "kv":
                # Two more workloads of new prefixes: more blocks than the replicas hold, so they evict.
                later = asyncio.run(drive(serve_url, "bench", prefix_workload(12, 2, seed=4)
                                          + prefix_workload(12, 2, seed=5), 2, 4))["prefix_hit_rate"]
                time.sleep(2)  # a few routing-stats polls: the replicas' mirrors take in the last events
                stats = replica_stats(serve_url, 2)
        finally:
            launch.undeploy()
    single, kv = rates["single"], rates["kv"]
    removed = {r: s["kv_num_removed"] for r, s in stats.items()}
    print(f"\nvLLM prefix-hit rate: 1 replica {single:.3f}, 2 replicas kv router {kv:.3f} (x{kv / single:.2f}); "
          f"later, evicting: {later:.3f}; blocks removed per replica (as told to the router): {removed}")
    assert single > 0.3
    assert kv >= 0.95 * single
    assert len(stats) == 2 and sum(removed.values()) > 0  # vLLM's evictions reached what the router is sent
    assert later >= 0.5 * single  # two repeats, not three: fewer hits possible; the router still finds them
