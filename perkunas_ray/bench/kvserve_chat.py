"""`perkunas bench kvserve` on the chat workload: three request routers over the same engine replicas.

Routers: ours (deployments/router.py: block-hash prefix match on what the replicas report, load guard), Serve's
default (power of two choices), and Ray Serve LLM's PrefixCacheAffinityRouter (bench/affinity_router.py shows it
our prompts). Each is deployed in turn on the same local Serve, same model and fresh KV caches, and driven by the
same conversations (bench/chat_workload.py), all open at once: each sends its turns in order, a think time after
each reply, with at most `concurrency` requests in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import time
from pathlib import Path
from typing import Any

from perkunas_ray.bench import load
from perkunas_ray.bench.chat_workload import ChatWorkloadSpec, Conversation
from perkunas_ray.bench.kvserve_app import TOKEN, bench_registry, build_app
from perkunas_ray.kvserve.registry import Registry

ROUTERS = ("pow2", "affinity", "kv")  # Serve's default, Ray Serve LLM's, ours
GOAL_VS_POW2 = 0.6  # our TTFT p50 at most this fraction of the default router's


def context_for(spec: ChatWorkloadSpec, max_tokens: int) -> int:
    """The smallest power of two that holds the longest prompt and its reply (the model's max_seq_len)."""
    need, n = spec.max_prompt_tokens() + max_tokens, 256
    while n < need:
        n *= 2
    return n


async def drive_conversations(url: str, conversations: list[Conversation], concurrency: int, max_tokens: int,
                              think_s: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """Every conversation at once, each sending its turns in order with a pause (uniform in [0, 2 think_s]) after
    each reply, at most `concurrency` requests in flight; the summary of every turn's timings (load.summarize)
    plus TTFT p50 of first turns and of follow-ups apart.

    The pause is what a user thinks: without it each conversation would hold one slot of the client, and a
    replica that just finished its turn would be the less loaded one for its next turn: any load-based router
    would look cache-aware."""
    results: list[tuple[int, dict[str, Any]]] = []
    slots = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with load.session(concurrency) as client:
        async def user(conversation: Conversation, rng: random.Random) -> None:
            for turn, prompt in enumerate(conversation.turns):
                if turn and think_s:
                    await asyncio.sleep(rng.uniform(0, 2 * think_s))
                body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                        "ignore_eos": True, "stream_options": {"include_usage": True}}
                async with slots:
                    results.append((turn, await load.stream_completion(client, url, body, headers)))

        start = time.perf_counter()
        await asyncio.gather(*(user(c, random.Random(seed * 100_003 + i)) for i, c in enumerate(conversations)))
        wall = time.perf_counter() - start
    summary = load.summarize([r for _, r in results], wall)
    for name, keep in (("first_turn", lambda t: t == 0), ("follow_up", lambda t: t > 0)):
        summary[f"ttft_p50_{name}_ms"] = 1e3 * load.percentile([r["ttft"] for t, r in results if keep(t)], 0.5)
    return summary


def run_router(url: str, registry: Registry, router: str, conversations: list[Conversation], concurrency: int,
               max_tokens: int, think_s: float = 0.0, seed: int = 0) -> dict[str, Any]:
    from ray import serve

    from deployments import launch

    serve.run(build_app(registry, router, f"bench:{TOKEN}"), name=launch.APP_NAME, route_prefix="/")
    try:
        # Warm every replica up (model load, first-call costs) with prompts no conversation shares.
        warm = [Conversation(-1, [[7 + i] * (16 * (i + 1))]) for i in range(8)]
        load.run(drive_conversations(url, warm, 4, 2))
        return load.run(drive_conversations(url, conversations, concurrency, max_tokens, think_s, seed))
    finally:
        launch.undeploy()


def compare(url: str, registry: Registry, conversations: list[Conversation], concurrency: int, max_tokens: int,
            routers: tuple[str, ...] = ROUTERS, think_s: float = 0.0, seed: int = 0,
            rounds: int = 1) -> dict[str, dict[str, Any]]:
    """Each router in turn on the running Serve at `url`, with `registry`'s router settings for ours; with several
    rounds (the order rotating, so that drift on a shared machine favours no router), each number is the median
    over rounds."""
    per_round: dict[str, list[dict[str, Any]]] = {router: [] for router in routers}
    for i in range(rounds):
        for router in routers[i % len(routers):] + routers[:i % len(routers)]:
            policy = "pow2" if router == "pow2" else "kv"
            per_round[router].append(run_router(url, dataclasses.replace(registry, router=dataclasses.replace(
                registry.router, policy=policy)), router, conversations, concurrency, max_tokens, think_s, seed))
    return {router: {key: statistics.median(r[key] for r in runs) for key, value in runs[0].items()
                     if isinstance(value, (int, float))} for router, runs in per_round.items()}


def make_model_dir(work_dir: Path, preset: str, max_seq_len: int, seed: int) -> Path:
    """A run dir of `preset` with random weights and the context the workload needs."""
    from perkunas_ray.engine.torch_thread import run_on_torch_thread
    from perkunas_ray.kvserve.toy import make_model_run_dir
    from perkunas_ray.model.presets import load_preset

    cfg = load_preset(preset, max_seq_len=max(max_seq_len, load_preset(preset).max_seq_len))
    return run_on_torch_thread(make_model_run_dir, work_dir / preset, cfg, 2000, seed)


def print_report(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    cols = ("ttft_p50_ms", "ttft_p99_ms", "ttft_p50_first_turn_ms", "ttft_p50_follow_up_ms", "tpot_p50_ms",
            "output_tokens_per_s", "requests_per_s", "prefix_hit_rate")
    heads = ("TTFT p50", "TTFT p99", "1st turn", "follow-up", "TPOT p50", "out tok/s", "req/s", "hit rate")
    print(f"\n{'router':10s}" + "".join(f"{h:>11s}" for h in heads) + "   (ms; 1st turn / follow-up: TTFT p50)")
    for router, r in results.items():
        print(f"{router:10s}" + "".join(f"{r[c]:>11.3f}" if c == "prefix_hit_rate" else f"{r[c]:>11.1f}"
                                        for c in cols))
    ratios = {}
    if "kv" in results:
        for other in results:
            if other != "kv" and results[other]["ttft_p50_ms"]:
                ratios[f"kv_vs_{other}"] = results["kv"]["ttft_p50_ms"] / results[other]["ttft_p50_ms"]
    if ratios:
        print("TTFT p50, ours / theirs: " + ", ".join(f"{k[6:]} {v:.2f}" for k, v in ratios.items())
              + f" (goal: <= {GOAL_VS_POW2} vs pow2, <= 1.0 vs affinity)")
    return ratios


def add_arguments(p: Any) -> None:
    p.add_argument("--preset", default="speed", help="chat: model preset (random weights; its context is widened "
                                                      "to hold the longest conversation)")
    p.add_argument("--num-system-prompts", type=int, default=8)
    p.add_argument("--system-tokens", type=int, default=1000)
    p.add_argument("--conversations-per-prompt", type=int, default=3)
    p.add_argument("--turns", type=int, default=4, help="chat: turns per conversation")
    p.add_argument("--user-tokens", type=int, default=40)
    p.add_argument("--assistant-tokens", type=int, default=40, help="chat: canned assistant turns in the history")
    p.add_argument("--cache-fraction", type=float, default=0.6,
                   help="chat: each replica's KV cache holds this fraction of the workload's distinct prompt tokens "
                        "(unless --num-blocks)")
    p.add_argument("--think-s", type=float, default=1.0, help="chat: a user's mean pause between a reply and the "
                                                               "next turn")
    p.add_argument("--rounds", type=int, default=1, help="chat: runs of every router (medians are reported)")
    p.add_argument("--routers", default=",".join(ROUTERS), help="chat: comma-separated, of " + ", ".join(ROUTERS))
    p.add_argument("--imbalance-threshold", type=int, default=None,
                   help="chat: our router's load guard (default: the registry's)")


def run(args: Any) -> int:
    import json
    import tempfile

    from tokenizers import Tokenizer

    from deployments import launch
    from perkunas_ray.bench.chat_workload import chat_workload
    from perkunas_ray.errors import ConfigError

    routers = tuple(r for r in args.routers.split(",") if r)
    if args.rounds < 1:
        raise ConfigError(f"bench kvserve: --rounds must be >= 1, got {args.rounds}")
    if not routers or set(routers) - set(ROUTERS):
        raise ConfigError(f"bench kvserve: --routers must name some of {', '.join(ROUTERS)}, got {args.routers!r}")
    spec = ChatWorkloadSpec(args.num_system_prompts, args.system_tokens, args.conversations_per_prompt, args.turns,
                            args.user_tokens, args.assistant_tokens)
    work_dir = Path(tempfile.mkdtemp(prefix="bench_kvserve_"))
    model_dir = Path(args.model_dir or make_model_dir(work_dir, args.preset, context_for(spec, args.max_tokens),
                                                      args.seed))
    vocab_size = Tokenizer.from_file(str(model_dir / "tokenizer.json")).get_vocab_size()
    conversations = chat_workload(spec, vocab_size, args.seed)
    # At least room for `concurrency` of the longest requests at once (their blocks are cached blocks too).
    running_blocks = args.concurrency * -(-(spec.max_prompt_tokens() + args.max_tokens) // args.block_size)
    num_blocks = args.num_blocks or max(running_blocks, int(args.cache_fraction * spec.distinct_prompt_tokens()
                                                            / args.block_size))
    router = {} if args.imbalance_threshold is None else {"imbalance_threshold": args.imbalance_threshold}
    registry = bench_registry(model_dir, args.replicas, num_blocks, args.block_size, "kv", **router)
    num_requests = len(conversations) * spec.num_turns
    print(f"bench kvserve (chat): model {model_dir} ({args.preset if not args.model_dir else 'given'}), "
          f"{args.replicas} replicas x {num_blocks} KV blocks of {args.block_size} (the workload's distinct prompts: "
          f"{spec.distinct_prompt_tokens() // args.block_size} blocks); {len(conversations)} conversations over "
          f"{spec.num_system_prompts} system prompts of {spec.system_tokens} tokens, {spec.num_turns} turns of "
          f"{spec.user_tokens} user + {spec.assistant_tokens} assistant tokens ({num_requests} requests), "
          f"{args.concurrency} requests at once, {args.think_s} s think time, {args.max_tokens} tokens out; "
          f"routers {', '.join(routers)}, {args.rounds} round(s)", flush=True)
    port = launch.free_port()
    url = f"http://127.0.0.1:{port}"
    launch.start_local("127.0.0.1", port, num_cpus=args.num_cpus)
    try:
        results = compare(url, registry, conversations, args.concurrency, args.max_tokens, routers, args.think_s,
                          args.seed, args.rounds)
    finally:
        launch.shutdown()
    ratios = print_report(results)
    goal_met = (ratios.get("kv_vs_pow2", 1.0) <= GOAL_VS_POW2 and ratios.get("kv_vs_affinity", 1.0) <= 1.0
                if ratios else None)
    print(json.dumps({"bench": "kvserve", "workload": "chat", "spec": dataclasses.asdict(spec),
                      "replicas": args.replicas, "rounds": args.rounds, "num_blocks": num_blocks,
                      "concurrency": args.concurrency, "think_s": args.think_s, "max_tokens": args.max_tokens,
                      "results": results, "ttft_p50_ratios": ratios, "goal_met": goal_met}))
    return 0
