"""`perkunas bench gpu`: the one device check of the single-GPU loop: the GPU test tier, then the done-when runs.

On one H100/H200, in this process (no Ray, no dataset: the tokens are random, which changes no figure measured
here), bf16 by default: Pion `small` (~100M) resident and streamed in a quarter of its training state, at >= 64K
tokens a step; Pion `xl` (771M) streamed in 8 GiB; the ~1.3B preset `xxl` streamed in 8 GiB. Each run builds the
in-process backend the main job uses (stream/local.py) and drives it in the training loop's order: a step's
forward and backward, then the previous step's updates are waited for, then this step's updates start (global
clipping) and run beside the next step's forward. "Training state" is what a resident step holds at its peak,
by the planner (stream/residency.py: masters, gradients, optimizer state and the step's own peak).

MFU = 6 x parameters x tokens/s / the device's dense bf16 peak (989 TFLOP/s on H100 SXM and H200); parameters
count the tied embedding once (its head matmul is real work); `mfu_with_attention` adds the causal attention's
6 x layers x seq_len x d_model flops per token. Both count no replay: the streamed step runs every forward twice,
so the hardware does 4/3 of that work. Prints one JSON line; the whole script is sized for 8 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perkunas_ray.config import RunConfig
from perkunas_ray.model.decoder import count_parameters
from perkunas_ray.model.presets import load_preset, preset_names
from perkunas_ray.model.shards import stream_shard_specs
from perkunas_ray.stream.clipping import clip_coefficient, total_norm
from perkunas_ray.stream.interface import PendingUpdates, UpdatePlan
from perkunas_ray.stream.local import LocalBackend
from perkunas_ray.stream.precision import compute_dtype_name
from perkunas_ray.stream.residency import resident_state_bytes
from perkunas_ray.stream.store import ShardStore, init_shard

GIB = 2**30
BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense, SXM
REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Case:
    """One measured run; budget_bytes 0 with `quarter`: a quarter of `quarter_of`'s training state."""

    name: str
    preset: str
    resident: bool
    micro_batch_size: int
    accumulation: int
    budget_bytes: int = 0
    quarter_of: str = ""
    trace_storage: str = "cpu"
    lm_head_chunk_tokens: int = 1024
    delayed: bool = False  # --delayed-update after one warm-up step (not exact: it shows what the delay buys)


def done_when_cases(seq_len: int) -> list[Case]:
    """The issue's runs, at 64K tokens a step (128K for the larger models, whose steps need it to hide PCIe)."""
    per_step = 65536 // seq_len
    return [
        Case("small_resident", "small", True, 8, per_step // 8, trace_storage="device", lm_head_chunk_tokens=4096),
        Case("small_streamed", "small", False, 2, per_step // 2, quarter_of="small_resident"),
        Case("xl_streamed_8gib", "xl", False, 4, 2 * per_step // 4, budget_bytes=8 * GIB),
        Case("xxl_streamed_8gib", "xxl", False, 4, 2 * per_step // 4, budget_bytes=8 * GIB),
        Case("xl_streamed_8gib_delayed", "xl", False, 4, 2 * per_step // 4, budget_bytes=8 * GIB, delayed=True),
    ]


def tiny_cases() -> list[Case]:
    """The same plumbing on a CPU in seconds (--device cpu --tiny)."""
    return [Case("tiny_resident", "tiny", True, 2, 2, trace_storage="device", lm_head_chunk_tokens=64),
            Case("tiny_streamed", "tiny", False, 2, 2, quarter_of="tiny_resident", lm_head_chunk_tokens=64),
            Case("tiny_streamed_delayed", "tiny", False, 2, 2, quarter_of="tiny_resident", lm_head_chunk_tokens=64,
                 delayed=True)]


def run_config(case: Case, device: torch.device, seq_len: int, budget: int) -> RunConfig:
    cfg = RunConfig(model=load_preset(case.preset, lm_head_chunk_tokens=case.lm_head_chunk_tokens,
                                      max_seq_len=seq_len))
    t, s = cfg.train, cfg.stream
    t.device, t.seq_len, t.micro_batch_size = str(device), seq_len, case.micro_batch_size
    t.gradient_accumulation_steps, t.grad_clip_mode, t.max_grad_norm = case.accumulation, "global", 1.0
    t.lr_schedule, t.learning_rate = "constant", 3e-4
    s.resident, s.trace_storage, s.max_resident_bytes = ("on" if case.resident else "off"), case.trace_storage, budget
    s.delayed_update, s.delayed_update_warmup_steps = case.delayed, 1
    return cfg.validate()


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in BF16_PEAK_FLOPS.items() if key in name), None)


def measure(cfg: RunConfig, device: torch.device, resident: bool, warmup: int, steps: int) -> dict[str, Any]:
    """Tokens/s over `steps` steps after `warmup`, the allocator's (CUDA) or tracked peak, the last loss."""
    m, t = cfg.model, cfg.train
    shards = {s.name: init_shard(cfg, s.name, t.seed) for s in stream_shard_specs(m)}
    if resident:
        shards = {n: {k: v.to(device) for k, v in p.items()} for n, p in shards.items()}
    store = ShardStore(cfg, shards)
    del shards
    rng = np.random.default_rng(t.seed)
    batch = rng.integers(0, m.vocab_size, size=(t.gradient_accumulation_steps, t.micro_batch_size, t.seq_len + 1))
    with tempfile.TemporaryDirectory() as work:
        backend = LocalBackend(cfg, store, device, Path(work), resident=resident)
        try:
            return _steps(backend, cfg, batch, device, warmup, steps)
        finally:
            backend.close()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _steps(backend: LocalBackend, cfg: RunConfig, batch: np.ndarray, device: torch.device, warmup: int,
           steps: int) -> dict[str, Any]:
    t, s = cfg.train, cfg.stream
    previous: PendingUpdates | None = None
    peaks, losses = [], []
    start = time.perf_counter()
    for index in range(warmup + steps):
        if index == warmup:
            if previous is not None:
                backend.update_stats(previous)
                previous = None
            _sync(device)
            start = time.perf_counter()
        delayed = s.delayed_update and index >= s.delayed_update_warmup_steps
        plan = UpdatePlan(t.learning_rate, False, "global", t.max_grad_norm, delayed=delayed)
        stats, _ = backend.train_step(batch, plan, snapshot=False)
        if previous is not None:
            backend.update_stats(previous)  # as the loop does: the previous step's updates, read by this one
        norms = [n for name in backend.store.names for n in stats.param_norms.get(name, [])]
        previous = backend.update_all(t.learning_rate, clip_coefficient(total_norm(norms), t.max_grad_norm), 1.0,
                                      snapshot=False)
        if index >= warmup:
            peaks.append(stats.peak_bytes)
            losses.append(stats.loss)
    if previous is not None:
        backend.update_stats(previous)
    _sync(device)
    elapsed = time.perf_counter() - start
    tokens = int(np.prod(batch.shape[:2])) * (batch.shape[2] - 1)
    return {"tokens_per_step": tokens, "tokens_per_s": tokens * steps / elapsed, "step_s": elapsed / steps,
            "peak_bytes": max(peaks), "last_loss": losses[-1], "losses_finite": bool(np.isfinite(losses).all())}


def run_case(case: Case, device: torch.device, seq_len: int, warmup: int, steps: int,
             states: dict[str, int]) -> dict[str, Any]:
    """One case's figures, or why it has none (a missing preset, a budget the runtime refuses, out of memory)."""
    if case.preset not in preset_names():
        return {"skipped": f"no model preset {case.preset!r} in perkunas_ray/configs/models"}
    budget = case.budget_bytes or (states[case.quarter_of] // 4 if case.quarter_of in states else 0)
    if case.quarter_of and not budget:
        return {"skipped": f"needs {case.quarter_of}'s training state, which was not measured"}
    cfg = run_config(case, device, seq_len, budget)
    params = count_parameters(cfg.model)
    state = resident_state_bytes(cfg, device.type)
    states[case.name] = state
    out: dict[str, Any] = {"params": params, "dtype": compute_dtype_name(cfg.train, device), "budget_bytes": budget,
                           "training_state_bytes": state, "micro_batch_size": case.micro_batch_size,
                           "accumulation": case.accumulation, "trace_storage": case.trace_storage,
                           "delayed_update": case.delayed}
    try:
        out.update(measure(cfg, device, case.resident, warmup, steps))
    except Exception as exc:  # a budget the runtime refuses, out of memory, a CUDA error: reported, the rest run
        out["error"] = f"{type(exc).__name__}: {exc}"[:400]
        return out
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if budget:
        out["peak_within_budget"] = out["peak_bytes"] <= budget
    peak = device_peak_flops(device)
    if peak:
        m = cfg.model
        attention = 6 * m.n_layers * seq_len * m.d_model
        out["mfu"] = 6 * params * out["tokens_per_s"] / peak
        out["mfu_with_attention"] = (6 * params + attention) * out["tokens_per_s"] / peak
    return out


def gpu_tests(timeout_s: float) -> dict[str, Any]:
    """The GPU test tier (tests/gpu) in a child process; its summary line."""
    if not (REPO / "tests" / "gpu").is_dir():
        return {"skipped": "no tests/gpu beside this package (not a checkout)"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s", "seconds": timeout_s}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {"returncode": done.returncode, "summary": lines[-1] if lines else done.stderr[-300:],
            "failed": failures[:10], "seconds": round(time.perf_counter() - start, 1)}


def register(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser("gpu", help="the single-GPU device check: GPU tests + resident/streamed MFU, one JSON line",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p)


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu with --tiny (a plumbing smoke run)")
    p.add_argument("--tiny", action="store_true", help="the micro preset, two short runs: proves the script here")
    p.add_argument("--steps", type=int, default=3, help="measured steps per run (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--skip-tests", action="store_true", help="skip the GPU test tier")
    p.add_argument("--tests-timeout", type=float, default=240.0, help="seconds for the GPU test tier")
    p.add_argument("--time-limit", type=float, default=400.0,
                   help="seconds after which the remaining runs are skipped (the script is sized for 8 minutes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("perkunas bench gpu: no CUDA device here; run it on a GPU machine "
              "(or `perkunas bench gpu --device cpu --tiny` to check its plumbing)", file=sys.stderr)
        print(json.dumps({"bench": "gpu", "skipped": "no CUDA device"}))
        return 0
    if device.type != "cuda" and not args.tiny:
        print("perkunas bench gpu: off CUDA only --tiny runs (the done-when runs need a GPU)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    result: dict[str, Any] = {"bench": "gpu", "device": torch.cuda.get_device_name(device)
                              if device.type == "cuda" else "cpu", "torch": torch.__version__}
    if not args.skip_tests and device.type == "cuda":
        result["gpu_tests"] = gpu_tests(args.tests_timeout)
    seq_len = 32 if args.tiny else args.seq_len
    states: dict[str, int] = {}
    runs: dict[str, Any] = {}
    for case in tiny_cases() if args.tiny else done_when_cases(seq_len):
        if time.perf_counter() - started > args.time_limit:
            runs[case.name] = {"skipped": f"time limit {args.time_limit:.0f} s reached"}
            continue
        case_start = time.perf_counter()
        runs[case.name] = run_case(case, device, seq_len, args.warmup, args.steps, states)
        runs[case.name]["seconds"] = round(time.perf_counter() - case_start, 1)
        print(f"{case.name}: {runs[case.name]}", file=sys.stderr, flush=True)
    result["runs"] = runs
    prefix = "tiny" if args.tiny else "small"
    resident, streamed = runs.get(f"{prefix}_resident", {}), runs.get(f"{prefix}_streamed", {})
    if "tokens_per_s" in resident and "tokens_per_s" in streamed:
        result["streamed_over_resident"] = streamed["tokens_per_s"] / resident["tokens_per_s"]
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m perkunas_ray.bench.gpu`: the same, without the `perkunas` command (a GPU machine with neither Ray
    nor this project's virtualenv, whose interpreter check would hand the command over)."""
    parser = argparse.ArgumentParser(prog="python -m perkunas_ray.bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
