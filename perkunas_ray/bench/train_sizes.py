"""`perkunas bench train --sizes 8M,30M,100M`: the streaming-vs-reference comparison at several model sizes.

Each size gets a shape (8 layers up to 50M parameters, 12 above; d_model a multiple of 32 solving
params ~ size; d_ff = 3 x d_model) and fewer measured steps above 50M. MFU counts 6N + 12 L D T model
FLOPs per token (N parameters, the head's matmul included through the tied embedding; L layers, D
width, T sequence length); HFU adds the forward that both trainers replay in backward (2N + 4 L D T).
Both are against the fp32 matmul rate measured on the device at the start (the best of short bursts) or given
with --peak-flops: the attainable peak of this machine for this work, so they compare sizes and
trainers rather than chips; on a loaded machine the measured rate is low and the figures high.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from perkunas_ray.data import load_manifest
from perkunas_ray.device import resolve_device
from perkunas_ray.errors import ConfigError

BIG = 50_000_000  # above this, fewer steps and deeper shapes
VOCAB = 8192  # the bundled corpus's tokenizer
SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9}


def parse_sizes(text: str) -> list[int]:
    """'8M,30M,100M' -> parameter counts."""
    sizes = []
    for item in text.split(","):
        raw = item.strip().lower()
        scale = SUFFIXES.get(raw[-1:], 1)
        try:
            value = float(raw[:-1] if raw[-1:] in SUFFIXES else raw) * scale
        except ValueError:
            raise ConfigError(f"--sizes must list parameter counts like 8M,30M,100M, got {item.strip()!r}") from None
        if value < 100_000:
            raise ConfigError(f"--sizes: {item.strip()!r} is below the smallest model this bench builds (0.1M)")
        sizes.append(int(value))
    return sizes


def shape_for(num_params: int, vocab_size: int = VOCAB) -> tuple[int, int, int]:
    """(d_model, n_layers, d_ff) with about num_params parameters: 12 L D^2 (blocks) + V D (tied embedding)."""
    layers = 8 if num_params <= BIG else 12
    a, b = 12 * layers, vocab_size
    width = (-b + math.sqrt(b * b + 4 * a * num_params)) / (2 * a)
    d_model = max(32, 32 * round(width / 32))
    return d_model, layers, 3 * d_model


def matmul_flops_per_s(device: torch.device, bursts: int = 8, burst_s: float = 0.25) -> float:
    """The best fp32 GEMM rate of several short bursts on `device` (the best, so outside load lowers it least)."""
    n = 8192 if device.type == "cuda" else 2048  # a GPU needs a big product to leave launch overhead behind
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up
    best = 0.0
    for _ in range(bursts):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < burst_s:
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # a launch only queues the product: time it done, not queued
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start))
    return best


def flops_per_token(result: dict[str, Any]) -> tuple[float, float]:
    """(model, hardware) FLOPs per trained token; hardware adds the forward replayed in backward."""
    n, layers, width, seq = result["params"], result["n_layers"], result["d_model"], result["seq_len"]
    model = 6 * n + 12 * layers * width * seq
    return model, model + 2 * n + 4 * layers * width * seq


def run_sizes(args: argparse.Namespace, compare: Callable[[argparse.Namespace], dict[str, Any]]) -> int:
    sizes = parse_sizes(args.sizes)
    vocab_size = load_manifest(args.data_dir).vocab_size if args.data_dir else VOCAB
    peak = args.peak_flops * 1e9 if args.peak_flops else matmul_flops_per_s(resolve_device(args.device))
    rows = []
    for size in sizes:
        d_model, n_layers, d_ff = shape_for(size, vocab_size)
        steps = args.steps if size <= BIG else max(2, args.steps // 3)
        warmup = args.warmup if size <= BIG else 1
        sized = argparse.Namespace(**{**vars(args), "d_model": d_model, "n_layers": n_layers, "d_ff": d_ff,
                                      "steps": steps, "warmup": warmup, "work_dir": ""})
        result = compare(sized)
        model_flops, hardware_flops = flops_per_token(result)
        for side in ("reference", "stream"):
            tps = result[f"{side}_tokens_per_s"]
            result[f"{side}_mfu"] = tps * model_flops / peak
            result[f"{side}_hfu"] = tps * hardware_flops / peak
        result["matmul_flops_per_s"] = peak
        rows.append(result)
        print(json.dumps(result), flush=True)
    source = "given" if args.peak_flops else "measured (best burst)"
    print(f"MFU/HFU against the {source} fp32 matmul rate {peak / 1e9:,.1f} GFLOP/s")
    header = ("size", "params", "shape L x D", "steps", "ref tok/s", "stream tok/s", "tput ratio", "mem ratio",
              "stream MFU", "stream HFU", "ref MFU", "orchestr. s")
    print("".join(f"{h:>13}" for h in header))
    for size, r in zip(sizes, rows, strict=True):
        cells = (f"{size / 1e6:g}M", f"{r['params'] / 1e6:.1f}M", f"{r['n_layers']} x {r['d_model']}", r["steps"],
                 f"{r['reference_tokens_per_s']:,.0f}", f"{r['stream_tokens_per_s']:,.0f}",
                 f"{r['throughput_ratio']:.3f}", f"{r['memory_ratio']:.3f}", f"{r['stream_mfu']:.1%}",
                 f"{r['stream_hfu']:.1%}", f"{r['reference_mfu']:.1%}",
                 f"{r['stream_breakdown_s']['orchestration_s']:.3f}")
        print("".join(f"{c:>13}" for c in cells))
    return 0
