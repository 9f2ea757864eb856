"""`perkunas bench serve`: what the serving stack costs beside its engine, and (with `--vs-llamacpp`) how
`perkunas serve` compares with llama.cpp's `llama-server` as a user meets the two: each server alone on the
machine, the same weights, the same requests, streamed one token per SSE event on both sides, and not streamed.

Workload: N concurrent `/v1/completions` requests (greedy, ignore_eos, a P-token prompt of random token ids, T
tokens out) for each N of --streams; each round sends N fresh prompts at once; median of --rounds. Model: a
preset (default `speed`) with random weights (greedy + ignore_eos make the work independent of quality).
Sides, run in two phases:
  alone (no Ray on the machine)
    engine            the engine in this process (`NativeEngine.stream`, as a replica drives it)
    llama.cpp         `llama-server -np N -t THREADS` on our f32 GGUF export, streamed (one SSE event a token)
    llama.cpp-whole   the same, not streamed
  beside the Serve cluster (`perkunas serve`'s app: one model on one replica runs the routes in the engine
  replica, `ingress.mode: combined`; with --repeats K both phases run K times in turn, each time a fresh cluster)
    engine            the engine in this process again: "Ray tax" is its tok/s alone over here
    http              `perkunas serve` over HTTP, streamed (its registry's chunking: one event per engine step)
    http-whole        the same, not streamed
    handle            with `--ingress separate` only: a DeploymentHandle stream from this process to the replica
With `--engine vllm` (or `native,vllm`) the registry serves the model through a vLLM engine too, and
`--vs-vllm-server` / `--vs-ray-serve-llm` add vLLM's own server and Ray Serve LLM (see bench/serve_vllm.py).
On a small machine every Ray process wakes many times a second and preempts compute threads, so a server
measured beside Ray is not what its users get alone: llama-server only runs alone here, as its users run it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from perkunas_ray.bench import load
from perkunas_ray.bench.llama_server import llama_server
from perkunas_ray.bench.replica_cpu import CPU_KEYS, CPU_LABELS, with_cpu, with_local_cpu
from perkunas_ray.bench.serve_vllm import VLLM_MODEL, VLLM_SETTLE_S, vllm_ratios
from perkunas_ray.errors import ConfigError
from perkunas_ray.kvserve.registry import Registry, parse_registry

MODEL = "bench"
TOKEN = "bench-token"
GOAL_STACK_COST = 1.25  # engine in-process tok/s / serve tok/s, at most
GOAL_VS_LLAMACPP = {1: 0.8, 16: 1.0}  # serve tok/s / llama-server tok/s, at least (by stream count)
GOAL_ITL_VS_LLAMACPP = 2.0  # serve's streamed ITL p50 / llama-server's, at most
MODES = ("stream", "whole")
SETTLE_S = 0.5  # the pause before each round (see run)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serving stack vs engine in-process (ms per token by layer), "
                              "optionally vs llama.cpp's llama-server")
    p.add_argument("--preset", default="speed", help="model preset (random weights), default speed")
    p.add_argument("--streams", default="1,4,16", help="comma-separated numbers of concurrent streams")
    p.add_argument("--prompt-tokens", type=int, default=25)
    p.add_argument("--new-tokens", type=int, default=128, help="output tokens per request (EOS ignored)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per stream count (median)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the two phases (alone, then beside a fresh Serve cluster) this many times in turn; a "
                   "ratio across phases is the median of its repeats' (this machine's speed drifts over minutes)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of the engine (in-process and replica) "
                   "and of llama-server")
    p.add_argument("--replica-threads", type=int, default=None,
                   help="torch threads of the Serve replica (default: --threads; its num_cpus stays --threads)")
    p.add_argument("--stream-interval-ms", type=float, default=None,
                   help="the replica's stream coalescing interval (default: the registry's, see stream_interval_ms)")
    p.add_argument("--stream-messages-per-s", type=float, default=None,
                   help="the replica's stream message budget (default: the registry's, see stream_messages_per_s)")
    p.add_argument("--modes", default="stream,whole", help="stream (SSE) and/or whole (non-streaming) requests")
    p.add_argument("--ingress", choices=("auto", "separate", "combined"), default="auto",
                   help="the registry's ingress.mode (auto: combined, the routes in the engine replica; separate adds "
                   "the handle side and the layer breakdown)")
    p.add_argument("--direct-ingress", action=argparse.BooleanOptionalAction, default=True,
                   help="serve with Serve's direct ingress, as `perkunas serve` does by default (the ingress replica's "
                   "own HTTP port; `http-proxy`: the same replica through Serve's proxy)")
    p.add_argument("--vs-llamacpp", metavar="PATH", default=None,
                   help="a llama-server binary: run the same workload on it (our f32 GGUF export of the weights)")
    p.add_argument("--engine", default="native", help="engines behind `perkunas serve`: native, vllm or native,vllm "
                   "(vllm: the same weights through our fp32 Hugging Face export)")
    p.add_argument("--vs-vllm-server", action="store_true",
                   help="also run vLLM's own OpenAI server on the same export and engine arguments (needs vllm)")
    p.add_argument("--vs-ray-serve-llm", action="store_true",
                   help="also deploy Ray Serve LLM (build_openai_app) on the same export, one CPU replica")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


# ---- workload -----------------------------------------------------------------------------------

def workload(streams: list[int], rounds: int, prompt_tokens: int, vocab_size: int,
             seed: int) -> dict[int, list[list[list[int]]]]:
    """Fresh prompts for every round (no prefix-cache hits across rounds): streams -> rounds -> N prompts."""
    rng = random.Random(seed)
    return {n: [[[rng.randrange(1, vocab_size) for _ in range(prompt_tokens)] for _ in range(n)]
                for _ in range(rounds + 1)]  # round 0 warms up
            for n in streams}


def completion_bodies(prompts: list[list[int]], new_tokens: int, model: str = MODEL) -> list[dict[str, Any]]:
    return [{"model": model, "prompt": p, "max_tokens": new_tokens, "temperature": 0, "ignore_eos": True,
             "stream_options": {"include_usage": True}} for p in prompts]


def bench_registry(run_dir: Path, threads: int, stream_interval_ms: float | None = None,
                   stream_messages_per_s: float | None = None, replica_threads: int | None = None,
                   engines: tuple[str, ...] = ("native",), ingress: str = "auto") -> Registry:
    """One model per engine: MODEL on the native engine, VLLM_MODEL on vLLM (the same run dir)."""
    pacing = {key: value for key, value in (("stream_interval_ms", stream_interval_ms),
                                            ("stream_messages_per_s", stream_messages_per_s)) if value is not None}
    common = {"source": str(run_dir), "num_replicas": 1, "num_cpus": threads, "num_threads": replica_threads or threads,
              "max_ongoing_requests": 64, "kv_policy": {"max_num_seqs": 16}, **pacing}
    models = {name: {**common, "engine": engine} for name, engine in ((MODEL, "native"), (VLLM_MODEL, "vllm"))
              if engine in engines}
    return parse_registry({"models": models, "router": {"policy": "kv"}, "ingress": {"mode": ingress}})


# ---- timed sides --------------------------------------------------------------------------------

async def _timed_deltas(deltas: Any, count_tokens: Any) -> dict[str, Any]:
    """Per-request timings of an async iterator of deltas (`count_tokens(delta)` tokens each)."""
    start = time.perf_counter()
    arrivals, n_out = [], 0
    async for delta in deltas:
        n = count_tokens(delta)
        if n:
            arrivals.append(time.perf_counter())
            n_out += n
    end = time.perf_counter()
    ttft = (arrivals[0] if arrivals else end) - start
    return {"ttft": ttft, "e2e": end - start, "tpot": (end - start - ttft) / max(1, n_out - 1),
            "itl": [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)], "completion_tokens": n_out,
            "num_chunks": len(arrivals), "prompt_tokens": 0, "cached_tokens": 0}


async def _concurrent(make_stream: Any, prompts: list[list[int]], count_tokens: Any) -> dict[str, Any]:
    start = time.perf_counter()
    results = await asyncio.gather(*(_timed_deltas(make_stream(p), count_tokens) for p in prompts))
    return load.summarize(list(results), time.perf_counter() - start)


def engine_side(spec: Any, threads: int) -> Any:
    """A round runner over the engine in this process, built as the replica builds it."""
    import torch

    from perkunas_ray.engine.interface import SamplingParams
    from perkunas_ray.engine.torch_thread import run_on_torch_thread
    from perkunas_ray.kvserve.service import build_engine

    torch.set_num_threads(threads)
    engine, _ = run_on_torch_thread(build_engine, spec)  # where a replica builds it (engine/torch_thread.py)

    def round_(prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        return asyncio.run(_concurrent(lambda p: engine.stream(uuid.uuid4().hex, p, params), prompts,
                                       lambda out: len(out.outputs[0].delta_token_ids)))
    return with_local_cpu(round_)


def handle_side(handle: Any) -> Any:
    """A round runner streaming from the engine replica by DeploymentHandle; also reads the replica's timing."""
    from perkunas_ray.engine.interface import SamplingParams

    def stream(prompt: list[int], params: SamplingParams) -> Any:
        return handle.options(stream=True).stream.remote(request_id=uuid.uuid4().hex, prompt_token_ids=prompt,
                                                         params=params)

    def round_(prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)

        async def go() -> dict[str, Any]:
            before = await handle.stats.remote()
            result = await _concurrent(lambda p: stream(p, params), prompts,
                                       lambda d: sum(len(c.token_ids) for c in d.choices))
            after = await handle.stats.remote()
            busy = after.get("busy_s", 0.0) - before.get("busy_s", 0.0)
            tokens = after["num_generated_tokens"] - before["num_generated_tokens"]
            result["replica_tokens_per_s"] = tokens / busy if busy > 0 else 0.0
            return result
        return asyncio.run(go())
    return round_


def http_side(url: str, headers: dict[str, str] | None = None, model: str = MODEL, stream: bool = True) -> Any:
    def round_(prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        return load.run(load.drive(url, completion_bodies(prompts, new_tokens, model), len(prompts), headers,
                                   stream=stream))
    return round_


def http_sides(name: str, url: str, modes: tuple[str, ...], headers: dict[str, str] | None = None,
               model: str = MODEL, ours: bool = True) -> dict[str, Any]:
    """`name` streamed and `name-whole` not streamed, as `modes` asks; with `ours` (a perkunas server), each also
    reports where the replica's and the client's CPU went (bench/replica_cpu.py)."""
    sides = {}
    if "stream" in modes:
        sides[name] = http_side(url, headers, model)
    if "whole" in modes:
        sides[f"{name}-whole"] = http_side(url, headers, model, stream=False)
    if ours:
        sides = {side: with_cpu(round_, url, headers or {}, model) for side, round_ in sides.items()}
    return sides


def measure(sides: dict[str, Any], prompts_by_streams: dict[int, list[list[list[int]]]], new_tokens: int,
            settle_s: float = 0.0) -> tuple[dict[str, dict[int, dict[str, Any]]], dict[int, list[dict[str, float]]]]:
    """Per stream count, every side runs each round in turn (so load on a shared machine hits them alike): per
    side the median tok/s and latencies over the rounds (after a warm-up round), and each round's tok/s by side.
    `settle_s`: a pause before each round, so that no side's round starts while the previous side still spins."""
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in sides}
    per_round: dict[int, list[dict[str, float]]] = {}
    for n, rounds in prompts_by_streams.items():
        for round_ in sides.values():
            round_(rounds[0], new_tokens)  # warm-up: first-call costs, thread pools, connections, allocator
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        for prompts in rounds[1:]:
            for name, round_ in sides.items():
                time.sleep(settle_s)
                runs[name].append(round_(prompts, new_tokens))
        per_round[n] = [{name: runs[name][i]["output_tokens_per_s"] for name in sides} for i in range(len(rounds) - 1)]
        for name, rs in runs.items():
            short = [r["output_tokens"] for r in rs if r["output_tokens"] != n * new_tokens]
            if short:
                print(f"  warning: {name} at {n} streams produced {short} tokens per round, not {n * new_tokens}")
            row = {key: statistics.median(r[key] for r in rs) for key in
                   ("output_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "tpot_p50_ms",
                    "chunks_per_request")}
            row["tokens_per_s"] = row.pop("output_tokens_per_s")
            for key in ("replica_tokens_per_s", *CPU_KEYS):
                if all(key in r for r in rs):
                    row[key] = statistics.median(r[key] for r in rs)
            results[name][n] = row
            print(f"  {name:10s} {n:>3} streams: {row['tokens_per_s']:8.1f} tok/s, TTFT p50 {row['ttft_p50_ms']:.1f} "
                  f"ms, ITL p50 {row['itl_p50_ms']:.2f} ms", flush=True)
    return results, per_round


def round_ratio(per_round: list[dict[str, float]], num: str, den: str) -> float:
    """The median over rounds of num/den tok/s, each round's sides having run back to back."""
    return statistics.median(r[num] / r[den] for r in per_round)


# ---- report -------------------------------------------------------------------------------------

def breakdown(results: dict[str, dict[int, dict[str, Any]]], streams: list[int]) -> dict[int, dict[str, float]]:
    """ms per output token at each layer of the separate ingress (engine -> replica -> hop -> ingress+HTTP)."""
    table = {}
    for n in streams:
        ms = {layer: 1e3 / results[layer][n]["tokens_per_s"] for layer in ("engine", "handle", "http")}
        replica_tps = results["handle"][n].get("replica_tokens_per_s") or 0.0
        ms["replica"] = 1e3 / replica_tps if replica_tps else float("nan")
        table[n] = {"engine_ms": ms["engine"], "replica_ms": ms["replica"],
                    "replica_vs_engine_ms": ms["replica"] - ms["engine"],
                    "hop_ms": ms["handle"] - ms["replica"], "ingress_http_ms": ms["http"] - ms["handle"],
                    "serve_ms": ms["http"]}
    return table


def _row(label: str, cells: list[Any], fmt: str = "{:>10.1f}") -> None:
    print(f"  {label:44s}" + "".join(fmt.format(c) for c in cells))


def print_sides(title: str, results: dict[str, dict[int, dict[str, Any]]], streams: list[int]) -> None:
    print(f"\n{title}" + " " * max(1, 46 - len(title)) + "".join(f"{n:>7} str" for n in streams))
    for side in results:
        _row(f"{side} tok/s", [results[side][n]["tokens_per_s"] for n in streams])
    for side in results:
        for key in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "chunks_per_request"):
            if key.startswith("itl") and side.endswith("-whole"):
                continue
            _row(f"{side} {key.removesuffix('_ms').replace('_', ' ')}", [results[side][n][key] for n in streams])
    for side in results:
        for key in CPU_KEYS:
            if all(key in results[side][n] for n in streams):
                _row(f"{side} {CPU_LABELS[key]}", [results[side][n][key] for n in streams],
                     "{:>10.1f}" if key == "torch_waiting_for_cpu" else "{:>10.3f}")


def print_layers(table: dict[int, dict[str, float]], streams: list[int]) -> None:
    print("\nms per output token (aggregate; a layer's cost is the difference from the row above)")
    for key, label in (("engine_ms", "engine in-process"), ("replica_ms", "engine in the replica (own timing)"),
                       ("hop_ms", "  + replica -> caller hop"), ("ingress_http_ms", "  + ingress, proxy, HTTP"),
                       ("serve_ms", "= serve over HTTP"), ("replica_vs_engine_ms", "(replica - engine in-process)")):
        _row(label, [table[n][key] for n in streams], "{:>10.3f}")


Phase = dict[str, dict[int, dict[str, Any]]]  # side -> stream count -> figures (see `measure`)


def combine(phases: list[Phase]) -> Phase:
    """One phase's table from its repeats: per side, stream count and figure, the median over repeats."""
    return {side: {n: {key: statistics.median(p[side][n][key] for p in phases) for key in row}
                   for n, row in by_n.items()} for side, by_n in phases[0].items()}


def across_phases(alone: list[Phase], beside: list[Phase], num: str, den: str, key: str, n: int) -> list[float]:
    """`num`'s figure (beside the cluster) over `den`'s (alone) at n streams, per repeat: each repeat's two phases ran
    back to back."""
    return [b[num][n][key] / max(1e-9, a[den][n][key]) for a, b in zip(alone, beside, strict=True)]


def ratios_and_goals(beside: list[Phase], alone: list[Phase], per_round: dict[int, list[dict[str, float]]],
                     alone_rounds: dict[int, list[dict[str, float]]], streams: list[int]) -> dict[str, Any]:
    """Stack cost (same phase, per round), Ray tax, and serve against llama-server alone (each per repeat of the two
    phases, then the median over repeats)."""
    def by_repeat(key: str, num: str, den: str, figure: str = "tokens_per_s",
                  invert: bool = False) -> dict[int, float]:
        each = {n: across_phases(alone, beside, num, den, figure, n) for n in streams}
        if invert:
            each = {n: [1 / r for r in rs] for n, rs in each.items()}
        if len(alone) > 1:
            ratios[f"{key}_by_repeat"] = each
        return {n: statistics.median(rs) for n, rs in each.items()}

    print("\nratios")
    ratios: dict[str, Any] = {}
    ratios["ray_tax_engine"] = by_repeat("ray_tax_engine", "engine", "engine", invert=True)
    _row("Ray tax: engine alone / beside Serve", list(ratios["ray_tax_engine"].values()), "{:>10.2f}")
    for side in ("http", "http-whole"):
        if side in beside[0]:
            key = "stack_cost" if side == "http" else "stack_cost_whole"
            ratios[key] = {n: round_ratio(per_round[n], "engine", side) for n in streams}
            _row(f"stack cost engine/{side} (goal <= {GOAL_STACK_COST})", list(ratios[key].values()), "{:>10.2f}")
    if "llama.cpp" in alone[0] or "llama.cpp-whole" in alone[0]:
        for ours, theirs, key in (("http", "llama.cpp", "vs_llamacpp"), ("http-whole", "llama.cpp-whole",
                                                                         "vs_llamacpp_whole")):
            if ours in beside[0] and theirs in alone[0]:
                ratios[key] = by_repeat(key, ours, theirs)
                _row(f"{ours} / {theirs} alone", list(ratios[key].values()), "{:>10.2f}")
                if len(alone) > 1:
                    for n in streams:
                        each = " ".join(f"{r:.2f}" for r in ratios[f"{key}_by_repeat"][n])
                        print(f"    {n} streams, by repeat: {each}")
        if "llama.cpp" in alone[0] and "http" in beside[0]:
            ratios["itl_vs_llamacpp"] = by_repeat("itl_vs_llamacpp", "http", "llama.cpp", "itl_p50_ms")
            _row(f"ITL p50: http / llama.cpp (goal <= {GOAL_ITL_VS_LLAMACPP})", list(ratios["itl_vs_llamacpp"].values()),
                 "{:>10.2f}")
        theirs = "llama.cpp" if "llama.cpp" in alone[0] else "llama.cpp-whole"
        ratios["engine_vs_llamacpp"] = {n: round_ratio(alone_rounds[n], "engine", theirs) for n in streams}
        _row(f"engine in-process / {theirs} (both alone)", list(ratios["engine_vs_llamacpp"].values()), "{:>10.2f}")
        print("  goals serve / llama-server alone: " + ", ".join(f">= {g} at {n} streams"
                                                               for n, g in GOAL_VS_LLAMACPP.items()))
    return ratios


def parse_engines(args: argparse.Namespace) -> tuple[str, ...]:
    engines = tuple(e.strip() for e in args.engine.split(","))
    if "native" not in engines or not set(engines) <= {"native", "vllm"}:
        raise ConfigError(f"bench serve: --engine must be native or native,vllm (the stack's layers are measured on "
                          f"the native engine), got {args.engine!r}")
    if (args.vs_vllm_server or args.vs_ray_serve_llm) and "vllm" not in engines:
        raise ConfigError("bench serve: --vs-vllm-server and --vs-ray-serve-llm compare with our vLLM engine: add "
                          "--engine native,vllm")
    return engines


def parse_modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(","))
    if not modes or not set(modes) <= set(MODES):
        raise ConfigError(f"bench serve: --modes must be stream, whole or stream,whole, got {text!r}")
    return modes


def parse_streams(text: str) -> list[int]:
    try:
        streams = [int(s) for s in text.split(",")]
    except ValueError:
        streams = []
    if not streams or min(streams) < 1:
        raise ConfigError(f"bench serve: --streams must be comma-separated positive integers, got {text!r}")
    return streams


def serve_sides(stack: contextlib.ExitStack, registry: Registry, args: argparse.Namespace, modes: tuple[str, ...],
                model_dir: Any, vllm_args: Any) -> dict[str, Any]:
    """Start Ray and the Serve app (stopped with `stack`); the sides measured over it."""
    from ray import serve

    from deployments import launch
    from perkunas_ray.kvserve.serve_options import deployment_name

    sides: dict[str, Any] = {}
    # Ray's CPU count is bookkeeping: each served engine reserves --threads of it, Ray Serve LLM its engine's
    # --threads plus a CPU each for its replica actor and its ingress, while all of them share the machine's
    # cores, one measured at a time.
    ray_cpus = args.threads * len(registry.models) + (args.threads + 2) * int(args.vs_ray_serve_llm)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if args.direct_ingress and (registry.combined or registry.ingress.num_replicas == 1):
        # the ingress replica's own port; Serve's proxy, on its own port, measured beside it
        port = launch.free_port()
        stack.callback(launch.shutdown)
        proxy_url = launch.start_local("127.0.0.1", port, num_cpus=ray_cpus, direct_ingress=True)
        launch.deploy(registry, f"bench:{TOKEN}")
        url = f"http://127.0.0.1:{port}"
        sides.update(http_sides("http-proxy", proxy_url, modes, headers))
    else:
        url = stack.enter_context(launch.serving(registry, api_tokens=f"bench:{TOKEN}", num_cpus=ray_cpus))
    if not registry.combined:
        sides["handle"] = handle_side(serve.get_deployment_handle(deployment_name(MODEL), app_name=launch.APP_NAME))
    sides.update(http_sides("http", url, modes, headers))
    if VLLM_MODEL in registry.models:
        sides["http-vllm"] = http_side(url, headers, VLLM_MODEL)
        if args.vs_ray_serve_llm:
            from perkunas_ray.bench.ray_serve_llm import ray_serve_llm

            llm_url = stack.enter_context(ray_serve_llm(url, model_dir, VLLM_MODEL, vllm_args, args.threads))
            sides["ray-serve-llm"] = http_side(llm_url, model=VLLM_MODEL)
    return sides


def run(args: argparse.Namespace) -> int:
    from tokenizers import Tokenizer

    from perkunas_ray.engine.torch_thread import run_on_torch_thread
    from perkunas_ray.kvserve.toy import make_model_run_dir
    from perkunas_ray.model.decoder import count_parameters
    from perkunas_ray.model.presets import load_preset

    streams = parse_streams(args.streams)
    engines = parse_engines(args)
    modes = parse_modes(args.modes)
    for flag in ("prompt_tokens", "new_tokens", "rounds", "repeats", "threads"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"bench serve: --{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    cfg = load_preset(args.preset)
    if args.prompt_tokens + args.new_tokens > cfg.max_seq_len:
        raise ConfigError(f"bench serve: --prompt-tokens + --new-tokens = {args.prompt_tokens + args.new_tokens} "
                         f"exceeds preset {args.preset}'s context of {cfg.max_seq_len} tokens")
    if args.vs_llamacpp and not Path(args.vs_llamacpp).is_file():
        raise ConfigError(f"bench serve: --vs-llamacpp {args.vs_llamacpp}: no such file (a llama-server binary)")
    work_dir = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    # Every tensor op of this process on one thread, as in a replica (engine/torch_thread.py): a second thread's
    # OpenMP team would slow the in-process engine side down.
    run_dir = run_on_torch_thread(make_model_run_dir, work_dir / "run", cfg, 100_000, args.seed)
    # Prompt ids within the tokenizer's vocabulary (the server checks them against it; the model's may be larger).
    vocab_size = Tokenizer.from_file(str(run_dir / "tokenizer.json")).get_vocab_size()
    registry = bench_registry(run_dir, args.threads, args.stream_interval_ms, args.stream_messages_per_s,
                              args.replica_threads, engines, args.ingress)
    print(f"bench serve: preset {args.preset} ({count_parameters(cfg) / 1e6:.1f}M params, random init), "
          f"{args.threads} threads, streams {streams}, {args.prompt_tokens}-token prompts, {args.new_tokens} tokens "
          f"out, greedy, median of {args.rounds} rounds x {args.repeats} repeat(s), modes {', '.join(modes)}, ingress "
          f"{'combined' if registry.combined else 'separate'}", flush=True)
    engine_round = engine_side(registry.models[MODEL], args.threads)
    vllm_spec = registry.models.get(VLLM_MODEL)
    # vLLM's workers busy-poll (sched_yield) for 1 s after their last work (shm_broadcast's busy_loop_s): on a
    # small machine that takes a core from whichever side runs next, so with vLLM sides every round waits it out.
    # llama-server's threads poll for work after each batch (its --poll 50 default) and torch's OpenMP threads spin
    # after each parallel region: a short pause keeps either from taking the next side's cores.
    settle_s = VLLM_SETTLE_S if vllm_spec is not None else SETTLE_S
    gguf = None
    if args.vs_llamacpp:
        from perkunas_ray.export import export_gguf

        gguf = run_on_torch_thread(functools.partial(export_gguf, dtype="f32"), run_dir, work_dir / "model.gguf")
    alone_phases: list[Phase] = []
    beside_phases: list[Phase] = []
    alone_rounds: dict[int, list[dict[str, float]]] = {n: [] for n in streams}
    per_round: dict[int, list[dict[str, float]]] = {n: [] for n in streams}
    with contextlib.ExitStack() as stack:
        vllm_url = model_dir = vllm_args = None
        if vllm_spec is not None:
            from perkunas_ray.bench.serve_vllm import engine_args

            model_dir, vllm_args = run_on_torch_thread(engine_args, vllm_spec)  # exports the run: torch work
            if args.vs_vllm_server:  # measured in both phases (bench/serve_vllm.py compares both ways)
                from perkunas_ray.bench.vllm_server import vllm_server

                vllm_url = stack.enter_context(vllm_server(model_dir, VLLM_MODEL, vllm_args))
        for repeat in range(args.repeats):
            # Fresh prompts per repeat: the in-process engine keeps its prefix cache across repeats.
            prompts = workload(streams, args.rounds, args.prompt_tokens, vocab_size, args.seed + repeat)
            if args.repeats > 1:
                print(f"repeat {repeat + 1} of {args.repeats}", flush=True)
            sides = {"engine": engine_round}
            if vllm_url is not None:
                sides["vllm-server"] = http_side(vllm_url, model=VLLM_MODEL)
            with contextlib.ExitStack() as alone_stack:  # llama-server runs alone only, as its users run it
                alone_sides = dict(sides)
                if gguf is not None:
                    llama_url = alone_stack.enter_context(llama_server(args.vs_llamacpp, gguf, args.threads,
                                                                       parallel=max(streams),
                                                                       ctx_per_slot=cfg.max_seq_len))
                    alone_sides.update(http_sides("llama.cpp", llama_url, modes, ours=False))
                print("alone (no Ray running):", flush=True)
                alone, rounds_alone = measure(alone_sides, prompts, args.new_tokens, settle_s)
            print("beside the Serve cluster:", flush=True)
            with contextlib.ExitStack() as ray_stack:
                sides.update(serve_sides(ray_stack, registry, args, modes, model_dir, vllm_args))
                results, rounds_beside = measure(sides, prompts, args.new_tokens, settle_s)
            alone_phases.append(alone)
            beside_phases.append(results)
            for n in streams:
                alone_rounds[n] += rounds_alone[n]
                per_round[n] += rounds_beside[n]
    alone, results = combine(alone_phases), combine(beside_phases)
    print_sides("alone (no Ray running)", alone, streams)
    print_sides("beside the Serve cluster", results, streams)
    report: dict[str, Any] = {}
    if "handle" in results and "http" in results:
        report["breakdown_ms_per_token"] = breakdown(results, streams)
        print_layers(report["breakdown_ms_per_token"], streams)
    ratios = ratios_and_goals(beside_phases, alone_phases, per_round, alone_rounds, streams)
    if "http-vllm" in results:
        ratios.update(vllm_ratios(results, alone, per_round, streams))
    print(json.dumps({"bench": "serve", "preset": args.preset, "threads": args.threads, "streams": streams,
                      "engines": list(engines), "modes": list(modes), "ingress_combined": registry.combined,
                      "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "rounds": args.rounds,
                      "repeats": args.repeats,
                      "results": results, "results_alone": alone, "per_round_tokens_per_s": per_round,
                      **report, **ratios}))
    return 0
