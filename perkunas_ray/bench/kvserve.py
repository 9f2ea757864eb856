"""`perkunas bench kvserve`: an HTTP load generator against kvserve on a local Ray Serve, our KV-aware router vs
Serve's default (power of two choices), in one run. The default workload, `chat` (multi-turn conversations over
long shared system prompts, Ray Serve LLM's router as a third contender), is in bench/kvserve_chat.py; this file
holds the CLI and the `prefix` workload, where a one-replica run is the prefix-hit baseline.

Each configuration is deployed in turn on the same Ray/Serve with the same model and fresh KV caches, then
driven by asyncio + aiohttp (N concurrent streams). Two workloads: prefix repetition (P shared prefixes, each
asked R times with different endings, interleaved) and random (no shared prefixes). Reported: TTFT, TPOT
and ITL p50/p99, throughput, and the aggregate prefix-hit rate (usage.prompt_tokens_details.cached_tokens /
prompt tokens). Goal: with 2 replicas, our hit rate >= 0.9x the single replica's.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from perkunas_ray.bench import kvserve_chat, load
from perkunas_ray.bench.kvserve_app import TOKEN, bench_registry
from perkunas_ray.engine.toy import sample_lines
from perkunas_ray.kvserve.registry import Registry

GOAL_HIT_RATIO = 0.9


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("kvserve", help="HTTP load on kvserve: KV-aware router vs Serve's default router "
                                              "(and Ray Serve LLM's PrefixCacheAffinityRouter on the chat workload)")
    p.add_argument("--workload", choices=("chat", "prefix"), default="chat",
                   help="chat: multi-turn conversations over long shared system prompts, on the --preset model "
                        "(bench/kvserve_chat.py); prefix: short shared prefixes and random prompts, a tiny model")
    p.add_argument("--model-dir", default=None, help="a run dir or HF package dir (default: a random-init model)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--num-prefixes", type=int, default=24, help="prefix: shared prefixes")
    p.add_argument("--repeats", type=int, default=3, help="prefix: requests per shared prefix")
    p.add_argument("--num-random", type=int, default=32, help="prefix: random requests (0: skip them)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--num-blocks", type=int, default=None,
                   help="KV blocks per replica (default: prefix 1024; chat: see --cache-fraction)")
    kvserve_chat.add_arguments(p)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


# ---- workloads ----------------------------------------------------------------------------------

def _story_paragraphs(n: int, min_chars: int, rng: random.Random) -> list[str]:
    lines = sample_lines(4000)
    rng.shuffle(lines)
    paragraphs, current = [], ""
    for line in lines:
        current = f"{current} {line}".strip()
        if len(current) >= min_chars:
            paragraphs.append(current)
            current = ""
            if len(paragraphs) == n:
                break
    while len(paragraphs) < n:  # a tiny corpus: vary what there is
        paragraphs.append(f"Part {len(paragraphs)}. {paragraphs[len(paragraphs) % max(1, len(paragraphs))]}")
    return paragraphs


def prefix_workload(num_prefixes: int, repeats: int, seed: int = 0) -> list[str]:
    """P prefixes x R endings, interleaved (p0 p1 ... pP-1 p0 p1 ...), so repeats of a prefix are apart."""
    rng = random.Random(seed)
    prefixes = _story_paragraphs(num_prefixes, 300, rng)
    return [f"{prefixes[p]} Question {r}: what did they do next?" for r in range(repeats)
            for p in range(num_prefixes)]


def random_workload(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.randrange(10**9)} {text}" for text in _story_paragraphs(n, 200, rng)]


# ---- load generator -----------------------------------------------------------------------------

async def drive(url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int) -> dict[str, Any]:
    """Send `prompts` in order with `concurrency` in flight; latency percentiles, throughput, prefix-hit rate."""
    bodies = [{"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
               "stream_options": {"include_usage": True}} for prompt in prompts]
    return await load.drive(url, bodies, concurrency, {"Authorization": f"Bearer {TOKEN}"})


# ---- deployments --------------------------------------------------------------------------------

def run_configuration(url: str, registry: Registry, workloads: dict[str, list[str]], concurrency: int,
                      max_tokens: int) -> dict[str, Any]:
    from deployments import launch  # Ray Serve loads only when a benchmark runs, not for `perkunas bench -h`

    launch.deploy(registry, api_tokens=f"bench:{TOKEN}")
    try:
        # Warm every replica up (model load, first-call costs) with prompts no workload shares.
        load.run(drive(url, "bench", [f"warm up {i} {'z' * (7 * i)}" for i in range(8)], 4, 2))
        return {name: load.run(drive(url, "bench", prompts, concurrency, max_tokens))
                for name, prompts in workloads.items()}
    finally:
        launch.undeploy()


def compare(url: str, model_dir: str | Path, *, replicas: int = 2, concurrency: int = 4, num_prefixes: int = 24,
            repeats: int = 3, num_random: int = 32, max_tokens: int = 16, num_blocks: int = 1024,
            block_size: int = 16, include_single: bool = True, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Deploy single (1 replica), default (pow2) and kv (ours) in turn on the running Serve at `url`."""
    workloads = {"prefix": prefix_workload(num_prefixes, repeats, seed)}
    if num_random:
        workloads["random"] = random_workload(num_random, seed + 1)
    configs = [("default", replicas, "pow2"), ("kv", replicas, "kv")]
    if include_single:
        configs.insert(0, ("single", 1, "kv"))
    results = {}
    for name, n, policy in configs:
        registry = bench_registry(model_dir, n, num_blocks, block_size, policy)
        results[name] = run_configuration(url, registry, workloads, concurrency, max_tokens)
    return results


def run(args: argparse.Namespace) -> int:
    if args.workload == "chat":
        return kvserve_chat.run(args)
    from deployments import launch
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    args.num_blocks = args.num_blocks or 1024
    work_dir = Path(tempfile.mkdtemp(prefix="bench_kvserve_"))
    model_dir = args.model_dir or make_tiny_run_dir(work_dir / "tiny")
    port = launch.free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"bench kvserve: model {model_dir}, {args.replicas} replicas, concurrency {args.concurrency}, prefix "
          f"workload {args.num_prefixes} prefixes x {args.repeats}, random {args.num_random}, "
          f"{args.max_tokens} tokens out, {args.num_blocks} KV blocks/replica", flush=True)
    launch.start_local("127.0.0.1", port, num_cpus=args.num_cpus)
    try:
        results = compare(url, model_dir, replicas=args.replicas, concurrency=args.concurrency,
                          num_prefixes=args.num_prefixes, repeats=args.repeats, num_random=args.num_random,
                          max_tokens=args.max_tokens, num_blocks=args.num_blocks, block_size=args.block_size,
                          seed=args.seed)
    finally:
        launch.shutdown()
    cols = ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "itl_p50_ms", "itl_p99_ms",
            "output_tokens_per_s", "requests_per_s", "prefix_hit_rate")
    heads = ("TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "ITL p50", "ITL p99", "out tok/s", "req/s", "hit rate")
    print(f"\n{'config':10s} {'workload':9s}" + "".join(f"{h:>10s}" for h in heads) + "   (ms unless noted)")
    for config, by_workload in results.items():
        for workload, r in by_workload.items():
            print(f"{config:10s} {workload:9s}" + "".join(f"{r[c]:>10.3f}" if c == "prefix_hit_rate"
                                                          else f"{r[c]:>10.1f}" for c in cols))
    single = results["single"]["prefix"]["prefix_hit_rate"]
    kv = results["kv"]["prefix"]["prefix_hit_rate"]
    default = results["default"]["prefix"]["prefix_hit_rate"]
    kv_ratio = kv / single if single else 0.0
    default_ratio = default / single if single else 0.0
    met = kv_ratio >= GOAL_HIT_RATIO
    print(f"\nprefix-hit rate vs 1 replica ({single:.3f}): kv router x{kv_ratio:.2f}, default router "
          f"x{default_ratio:.2f}; goal x{GOAL_HIT_RATIO} {'met' if met else 'MISSED'}")
    for by_workload in results.values():
        for r in by_workload.values():
            r.pop("cached_tokens_per_request", None)
    print(json.dumps({"bench": "kvserve", "replicas": args.replicas, "concurrency": args.concurrency,
                      "num_prefixes": args.num_prefixes, "repeats": args.repeats, "max_tokens": args.max_tokens,
                      "results": results, "hit_ratio_kv_vs_single": kv_ratio,
                      "hit_ratio_default_vs_single": default_ratio, "goal_hit_ratio": GOAL_HIT_RATIO,
                      "goal_met": met}))
    return 0
