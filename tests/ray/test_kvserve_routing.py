"""KV-aware router vs Serve's default router, 2 replicas, a prefix-repetition workload: aggregate hit rates."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ray


def test_kv_router_beats_default_on_prefix_hits(tmp_path) -> None:
    from perkunas_ray.bench.kvserve import compare
    from perkunas_ray.kvserve import launch
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    run = make_tiny_run_dir(tmp_path / "tiny")
    port = launch.free_port()
    launch.start_local("127.0.0.1", port, num_cpus=2)
    try:
        results = compare(f"http://127.0.0.1:{port}", run, replicas=2, concurrency=4, num_prefixes=16, repeats=3,
                          num_random=0, max_tokens=4, num_blocks=512, work_dir=tmp_path)
    finally:
        launch.shutdown()
    single, default, kv = (results[name]["prefix"]["prefix_hit_rate"] for name in ("single", "default", "kv"))
    print(f"\nprefix-hit rate: 1 replica {single:.3f}; 2 replicas: default router {default:.3f} "
          f"(x{default / single:.2f}), kv router {kv:.3f} (x{kv / single:.2f})")
    assert single > 0.3
    assert kv > default
    assert kv >= 0.9 * single
