"""`perkunas bench engine`: the native paged-KV engine against transformers `generate` on the same weights
(throughput), cached vs uncached prefix (TTFT), and paged vs contiguous KV capacity in a byte budget.

Weights are randomly initialised (seeded): throughput, latency and memory do not depend on training.
Everything runs in one process on the same model; medians over repeats; ratios printed; one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from typing import Any

import torch

from perkunas_ray.config import ModelConfig
from perkunas_ray.data.tokenizer import EOS_TOKEN_ID
from perkunas_ray.engine.interface import KVPolicy, SamplingParams
from perkunas_ray.engine.kv_cache_manager import KVCacheManager
from perkunas_ray.engine.kv_store import KVStore
from perkunas_ray.engine.request import Request
from perkunas_ray.model.decoder import DecoderLM, build_model, count_parameters

GOAL_THROUGHPUT_RATIO = 3.0  # engine at 16 concurrent vs transformers sequential
GOAL_BATCHED_RATIO = 2.0  # engine at 16 concurrent vs transformers batched generate (issue 15)
GOAL_TTFT_RATIO = 0.15  # cached / uncached prefix
GOAL_CAPACITY_RATIO = 2.0  # paged / contiguous sequences in the same KV bytes


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("engine", help="native engine vs transformers: throughput, prefix TTFT, KV capacity")
    p.add_argument("--preset", default="speed", help="model preset (random weights), default speed")
    p.add_argument("--max-seq-len", type=int, default=1024, help="context of the benchmark model")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated numbers of concurrent requests")
    p.add_argument("--new-tokens", type=int, default=64, help="output tokens per request (EOS ignored)")
    p.add_argument("--min-prompt", type=int, default=16)
    p.add_argument("--max-prompt", type=int, default=64)
    p.add_argument("--prefix-tokens", type=int, default=512)
    p.add_argument("--suffix-tokens", type=int, default=16)
    p.add_argument("--num-prefixes", type=int, default=3)
    p.add_argument("--kv-budget-mib", type=float, default=64.0)
    p.add_argument("--capacity-requests", type=int, default=2000, help="length samples drawn for the capacity test")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    # One intra-op thread by default, for both sides: on a small shared CPU, every multi-threaded tiny op
    # can stall for milliseconds waiting for a busy core, which swamps what is being measured.
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both sides (0: torch's "
                   "default); default 1")
    p.add_argument("--skip-hf", action="store_true", help="skip the transformers baselines")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


# ---- transformers baseline ----------------------------------------------------------------------

def hf_model(model: DecoderLM) -> Any:
    """A transformers LlamaForCausalLM (Qwen3ForCausalLM with QK-norm) holding our weights."""
    cfg = model.config
    if cfg.attn_softcap > 0:
        raise ValueError("transformers' Llama/Qwen3 have no attention soft-cap; pick a preset without it")
    kwargs = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                  num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                  head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
                  rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings, attention_bias=False,
                  hidden_act="silu", pad_token_id=0, bos_token_id=None, eos_token_id=None)
    if cfg.qk_norm:
        from transformers import Qwen3Config, Qwen3ForCausalLM

        hf = Qwen3ForCausalLM(Qwen3Config(**kwargs))
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        hf = LlamaForCausalLM(LlamaConfig(mlp_bias=False, **kwargs))
    state = dict(model.state_dict())
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf.to(model.head_weight.dtype).eval()


def hf_generate(hf: Any, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """One left-padded batch through transformers' greedy generate; exactly `new_tokens` each."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False, pad_token_id=0)
    return out[:, width:].tolist()


# ---- measurements -------------------------------------------------------------------------------

def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def random_prompts(rng: random.Random, n: int, lo: int, hi: int, vocab: int) -> list[list[int]]:
    return [[rng.randrange(1, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def make_engine(model: DecoderLM, tokenizer: Any, **policy: Any) -> Any:
    from perkunas_ray.engine.native import NativeEngine

    return NativeEngine(model, tokenizer, EOS_TOKEN_ID, KVPolicy(**policy))


def bench_throughput(model: DecoderLM, tokenizer: Any, hf: Any, args: argparse.Namespace,
                     concurrencies: list[int]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    vocab = model.config.vocab_size
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
    results: dict[str, Any] = {}
    # Prefix caching off: every repeat reuses the prompts, and the baselines cache nothing between calls.
    engine = make_engine(model, tokenizer, block_size=args.block_size, enable_prefix_caching=False,
                         max_num_seqs=max(concurrencies))
    engine.generate(random_prompts(rng, 2, 8, 8, vocab), SamplingParams(max_tokens=4, temperature=0))  # warm-up
    for c in concurrencies:
        prompts = random_prompts(rng, c, args.min_prompt, args.max_prompt, vocab)
        num_tokens = c * args.new_tokens
        row: dict[str, Any] = {}
        times = []
        for _ in range(args.repeats):
            seconds, outs = timed(lambda p=prompts: engine.generate(p, params))
            times.append(seconds)
        row["engine_tok_s"] = num_tokens / statistics.median(times)
        row["engine_ms_per_step"] = statistics.median(times) / args.new_tokens * 1e3  # one token per stream a step
        engine_tokens = [o.outputs[0].token_ids for o in outs]
        if hf is not None:
            seq_times, bat_times = [], []
            for _ in range(args.repeats):
                seconds, seq_tokens = timed(lambda p=prompts: [hf_generate(hf, [x], args.new_tokens)[0] for x in p])
                seq_times.append(seconds)
                seconds, _ = timed(lambda p=prompts: hf_generate(hf, p, args.new_tokens))
                bat_times.append(seconds)
            row["hf_sequential_tok_s"] = num_tokens / statistics.median(seq_times)
            row["hf_batched_tok_s"] = num_tokens / statistics.median(bat_times)
            row["ratio_vs_hf_sequential"] = row["engine_tok_s"] / row["hf_sequential_tok_s"]
            row["ratio_vs_hf_batched"] = row["engine_tok_s"] / row["hf_batched_tok_s"]
            same = sum(a == b for a, b in zip(engine_tokens, seq_tokens, strict=True))
            row["greedy_identical_to_hf"] = f"{same}/{c}"
        results[str(c)] = row
    return results


def bench_ttft(model: DecoderLM, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed + 1)
    vocab = model.config.vocab_size
    engine = make_engine(model, tokenizer, block_size=args.block_size, enable_prefix_caching=True)
    first = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    engine.generate(random_prompts(rng, 1, 32, 32, vocab), first)  # warm-up
    uncached, cached, hits = [], [], []
    for _ in range(args.repeats * args.num_prefixes):
        prefix = random_prompts(rng, 1, args.prefix_tokens, args.prefix_tokens, vocab)[0]
        suffixes = random_prompts(rng, 2, args.suffix_tokens, args.suffix_tokens, vocab)
        new, again = prefix + suffixes[0], prefix + suffixes[1]
        seconds, _ = timed(lambda p=new: engine.generate([p], first))  # the prefix is new
        uncached.append(seconds)
        seconds, out = timed(lambda p=again: engine.generate([p], first))  # its blocks are cached
        cached.append(seconds)
        hits.append(out[0].num_cached_tokens)
    u, c = statistics.median(uncached), statistics.median(cached)
    return {"uncached_ms": u * 1e3, "cached_ms": c * 1e3, "ratio": c / u, "cached_tokens": statistics.median(hits),
            "prompt_tokens": args.prefix_tokens + args.suffix_tokens}


def sample_lengths(rng: random.Random, n: int, max_len: int) -> list[int]:
    """prompt + output lengths: log-normal prompts (median ~180) and outputs (median ~120), capped."""
    out = []
    for _ in range(n):
        prompt = int(rng.lognormvariate(math.log(180), 0.8))
        output = int(rng.lognormvariate(math.log(120), 0.7))
        out.append(max(2, min(max_len, prompt + output)))
    return out


def count_fitting(num_blocks: int, block_size: int, lengths: list[int]) -> int:
    """Admit sequences (at their full final length) through the real allocator until one does not fit."""
    kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=False)
    for i, length in enumerate(lengths):
        if kv.allocate_slots(Request(f"r{i}", [1] * length), length) is None:
            return i
    return len(lengths)


def bench_capacity(model: DecoderLM, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    cfg = model.config
    budget = int(args.kv_budget_mib * 2**20)
    dtype = model.head_weight.dtype
    max_len = cfg.max_seq_len
    result: dict[str, Any] = {"budget_bytes": budget, "max_model_len": max_len}
    blocks: dict[str, int] = {}
    for kv_dtype in ("model", "int8"):
        # The engine sizes its pool from the byte budget exactly as in serving; read back what it allocated.
        engine = make_engine(model, tokenizer, block_size=args.block_size, kv_budget_bytes=budget, kv_dtype=kv_dtype)
        blocks[kv_dtype] = engine.core.kv_manager.num_blocks
        result[f"kv_bytes_allocated_{kv_dtype}"] = engine.core.kv_store.num_bytes
        del engine
    bytes_per_token = KVStore.bytes_per_block(cfg.n_layers, 1, cfg.n_kv_heads, cfg.head_dim, dtype, "model")
    slabs = budget // (bytes_per_token * max_len)  # contiguous: every request reserves max_model_len
    counts: dict[str, list[int]] = {"paged_model": [], "paged_int8": [], "contiguous_model": []}
    mean_lengths = []
    for r in range(args.repeats):
        lengths = sample_lengths(random.Random(args.seed + 100 + r), args.capacity_requests, max_len)
        mean_lengths.append(statistics.mean(lengths))
        counts["paged_model"].append(count_fitting(blocks["model"], args.block_size, lengths))
        counts["paged_int8"].append(count_fitting(blocks["int8"], args.block_size, lengths))
        counts["contiguous_model"].append(count_fitting(slabs, max_len, lengths))  # one block = one slab
    for name, values in counts.items():
        result[name] = statistics.median(values)
    result["mean_sequence_tokens"] = statistics.mean(mean_lengths)
    result["paged_vs_contiguous"] = result["paged_model"] / max(result["contiguous_model"], 1)
    result["int8_vs_model"] = result["paged_int8"] / max(result["paged_model"], 1)
    return result


# ---- report -------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    from perkunas_ray.engine.toy import toy_tokenizer
    from perkunas_ray.model.presets import load_preset

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg: ModelConfig = load_preset(args.preset, max_seq_len=args.max_seq_len)
    model = build_model(cfg, seed=args.seed).eval()
    tokenizer = toy_tokenizer(vocab_size=512)  # detokenisation only; prompts are token ids
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    hf = None if args.skip_hf else hf_model(model)
    print(f"bench engine: preset {args.preset} ({count_parameters(cfg) / 1e6:.1f}M params, random init), "
          f"{torch.get_num_threads()} threads, {args.new_tokens} new tokens, prompts {args.min_prompt}-"
          f"{args.max_prompt} tokens, block {args.block_size}, median of {args.repeats}")
    throughput = bench_throughput(model, tokenizer, hf, args, concurrencies)
    print(f"\n(a) output tokens/s{'':14s}" + "".join(f"{c:>12}" for c in concurrencies))
    for key, label in (("engine_tok_s", "native engine"), ("engine_ms_per_step", "engine ms per step"), ("hf_sequential_tok_s", "transformers sequential"),
                       ("hf_batched_tok_s", "transformers batched"), ("ratio_vs_hf_sequential", "ratio vs sequential"),
                       ("ratio_vs_hf_batched", "ratio vs batched"), ("greedy_identical_to_hf", "greedy == HF")):
        if key in throughput[str(concurrencies[0])]:
            cells = [throughput[str(c)][key] for c in concurrencies]
            print(f"    {label:28s}" + "".join(f"{x:>12.2f}" if isinstance(x, float) else f"{x:>12}" for x in cells))
    ttft = bench_ttft(model, tokenizer, args)
    print(f"\n(b) TTFT, {ttft['prompt_tokens']}-token prompt: uncached {ttft['uncached_ms']:.1f} ms, "
          f"{args.prefix_tokens}-token prefix cached ({ttft['cached_tokens']:.0f} tokens hit) "
          f"{ttft['cached_ms']:.1f} ms, ratio {ttft['ratio']:.3f}")
    capacity = bench_capacity(model, tokenizer, args)
    print(f"\n(c) sequences fitting in {args.kv_budget_mib:g} MiB of KV (lengths: log-normal, mean "
          f"{capacity['mean_sequence_tokens']:.0f} tokens, max {capacity['max_model_len']}):")
    print(f"    contiguous (max length each) {capacity['contiguous_model']:>6}")
    print(f"    paged, model dtype           {capacity['paged_model']:>6}   "
          f"x{capacity['paged_vs_contiguous']:.2f} vs contiguous")
    print(f"    paged, int8                  {capacity['paged_int8']:>6}   x{capacity['int8_vs_model']:.2f} vs model dtype")
    top = str(max(concurrencies))
    goals = {"throughput_ratio_at_max_concurrency": throughput[top].get("ratio_vs_hf_sequential"),
             "throughput_goal": GOAL_THROUGHPUT_RATIO,
             "batched_ratio_at_max_concurrency": throughput[top].get("ratio_vs_hf_batched"),
             "batched_goal": GOAL_BATCHED_RATIO, "ttft_ratio": ttft["ratio"], "ttft_goal": GOAL_TTFT_RATIO,
             "capacity_ratio": capacity["paged_vs_contiguous"], "capacity_goal": GOAL_CAPACITY_RATIO}
    # Without the transformers baselines (--skip-hf) their goals are not judged.
    met = [goals["throughput_ratio_at_max_concurrency"] is None
           or goals["throughput_ratio_at_max_concurrency"] >= GOAL_THROUGHPUT_RATIO,
           goals["batched_ratio_at_max_concurrency"] is None
           or goals["batched_ratio_at_max_concurrency"] >= GOAL_BATCHED_RATIO,
           ttft["ratio"] <= GOAL_TTFT_RATIO, capacity["paged_vs_contiguous"] >= GOAL_CAPACITY_RATIO]
    print(f"\ngoals: throughput x{GOAL_THROUGHPUT_RATIO:g} vs sequential at {top} concurrent "
          f"{'met' if met[0] else 'MISSED'}, x{GOAL_BATCHED_RATIO:g} vs batched {'met' if met[1] else 'MISSED'}, "
          f"TTFT ratio <= {GOAL_TTFT_RATIO} {'met' if met[2] else 'MISSED'}, "
          f"capacity x{GOAL_CAPACITY_RATIO:g} {'met' if met[3] else 'MISSED'}")
    print(json.dumps({"bench": "engine", "preset": args.preset, "num_parameters": count_parameters(cfg),
                      "threads": torch.get_num_threads(), "new_tokens": args.new_tokens, "repeats": args.repeats,
                      "throughput": throughput, "ttft": ttft, "capacity": capacity, "goals": goals,
                      "all_goals_met": all(met)}))
    return 0
