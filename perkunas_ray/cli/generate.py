"""`perkunas generate SOURCE --prompt ...`: complete prompts with the native paged-KV engine."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from perkunas_ray.engine.interface import KV_DTYPES, PRUNING_MODES, KVPolicy, SamplingParams


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """SOURCE, device/dtype and the KV policy: shared by generate and chat."""
    p.add_argument("source", help="a training run dir or a Hugging Face package dir")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-blocks", type=int, default=0, help="KV blocks (0: from --kv-budget-bytes or a default)")
    p.add_argument("--kv-budget-bytes", type=int, default=0)
    p.add_argument("--kv-dtype", default="model", choices=KV_DTYPES)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--pruning", default="none", choices=PRUNING_MODES)
    p.add_argument("--sink-tokens", type=int, default=4)
    p.add_argument("--window-tokens", type=int, default=256)


def add_sampling_arguments(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="complete prompts with the native paged-KV engine")
    add_engine_arguments(p)
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable: one batch)")
    add_sampling_arguments(p, max_new_tokens=64)
    p.add_argument("--n", type=int, default=1, help="completions per prompt")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    p.set_defaults(func=run)


def policy_from_args(args: argparse.Namespace) -> KVPolicy:
    return KVPolicy(block_size=args.block_size, num_blocks=args.num_blocks, kv_budget_bytes=args.kv_budget_bytes,
                    enable_prefix_caching=not args.no_prefix_caching, kv_dtype=args.kv_dtype, pruning=args.pruning,
                    sink_tokens=args.sink_tokens, window_tokens=args.window_tokens).validate()


def sampling_from_args(args: argparse.Namespace, **extra: Any) -> SamplingParams:
    return SamplingParams(max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          seed=args.seed, stop=list(args.stop), **extra)


def load_engine(args: argparse.Namespace) -> Any:
    from perkunas_ray.engine.native import NativeEngine

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    return NativeEngine.from_path(args.source, policy_from_args(args), device=args.device, dtype=args.dtype)


async def stream_to(engine: Any, request_id: str, prompt: str | list[int], params: SamplingParams, out: Any) -> Any:
    """Print the completion as it is generated; return the final RequestOutput."""
    final = None
    async for item in engine.stream(request_id, prompt, params):
        out.write(item.outputs[0].delta_text)
        out.flush()
        final = item
    return final


def run(args: argparse.Namespace) -> int:
    params = sampling_from_args(args, n=args.n)
    engine = load_engine(args)
    start = time.perf_counter()
    if len(args.prompt) == 1 and args.n == 1 and not args.json:
        sys.stdout.write(args.prompt[0])
        outputs = [asyncio.run(stream_to(engine, "cli", args.prompt[0], params, sys.stdout))]
        sys.stdout.write("\n")
    else:
        outputs = engine.generate(list(args.prompt), params)
        for prompt, out in zip(args.prompt, outputs, strict=True):
            if args.json:
                print(json.dumps({"prompt": prompt, "num_prompt_tokens": len(out.prompt_token_ids),
                                  "num_cached_tokens": out.num_cached_tokens,
                                  "completions": [{"text": c.text, "token_ids": c.token_ids,
                                                   "finish_reason": c.finish_reason} for c in out.outputs]}))
            else:
                for c in out.outputs:
                    print(f"{prompt}{c.text}\n")
    seconds = time.perf_counter() - start
    num_tokens = sum(len(c.token_ids) for out in outputs for c in out.outputs)
    print(f"[{engine.name}: {num_tokens} tokens in {seconds:.2f}s, {num_tokens / max(seconds, 1e-9):.1f} tok/s; "
          f"finish: {', '.join(c.finish_reason or '?' for out in outputs for c in out.outputs)}]", file=sys.stderr)
    return 0
