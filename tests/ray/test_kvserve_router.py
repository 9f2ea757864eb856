"""KV-aware router vs Serve's default router, 2 replicas, a prefix-repetition workload: aggregate hit rates;
and the router learning cache contents from the replicas' reported KV events alone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

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


def _environ(pattern: str) -> dict[str, str]:
    """The environment of the one process whose command line contains `pattern` (Linux /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and pattern in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(dict(item.split("=", 1) for item in (proc / "environ").read_bytes().decode(
                    errors="replace").split("\0") if "=" in item))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    assert len(found) == 1, f"{len(found)} processes match {pattern!r}"
    return found[0]


def test_the_local_ray_gets_the_serving_environment(serve_url) -> None:
    """start_local's Ray runs Serve's controller and Ray's log monitor with the quieter timers and the patient proxy
    check (deployments/launch.py)."""
    from deployments import launch

    expected = launch.local_ray_environment()
    assert {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD",
            "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"} <= set(expected)
    for process in ("ServeController", "log_monitor.py"):
        environ = _environ(process)
        assert {name: environ.get(name) for name in expected} == expected, process


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


def test_chat_bench_routes_follow_ups_to_their_cache(serve_url) -> None:
    """The chat routing bench's path end to end on 2 replicas, with Ray Serve LLM's PrefixCacheAffinityRouter (the
    contender whose adapter, bench/affinity_router.py, could break with Ray's internals; unadapted it finds no
    prompt and is power of two choices, about half these hits): each follow-up, and each later conversation of a
    system prompt, goes to the replica that caches its prefix. (Ours: the tests above.)"""
    from perkunas_ray.bench.chat_workload import ChatWorkloadSpec, chat_workload
    from perkunas_ray.bench.kvserve import bench_registry
    from perkunas_ray.bench.kvserve_chat import compare

    url, run, root = serve_url
    spec = ChatWorkloadSpec(num_system_prompts=4, system_tokens=160, conversations_per_prompt=2, num_turns=3,
                            user_tokens=16, assistant_tokens=16)
    conversations = chat_workload(spec, vocab_size=400, seed=3)
    # Every token a cache could serve: each follow-up's previous turn, each second conversation's system prompt.
    block = 16
    ideal = sum(len(t) // block * block for c in conversations for t in c.turns[:-1])
    ideal += (spec.conversations_per_prompt - 1) * spec.num_system_prompts * (spec.system_tokens // block * block)
    total = sum(len(t) for c in conversations for t in c.turns)
    results = compare(url, bench_registry(run, 2, 512, block, "kv"), conversations, concurrency=1, max_tokens=2,
                      routers=("affinity",), think_s=0.05)
    rate = results["affinity"]["prefix_hit_rate"]
    print(f"\nchat workload, 2 replicas, PrefixCacheAffinityRouter: prefix-hit rate {rate:.3f} "
          f"(ideal {ideal / total:.3f})")
    assert rate >= 0.9 * ideal / total
