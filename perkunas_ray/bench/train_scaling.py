"""`perkunas bench train --num-workers 1,2`: data-parallel scaling of the streaming runtime on Ray Train.

For each worker count N, a fresh run of the bench model trains on N workers with the per-worker batch
fixed (global batch = N x micro-batch x accumulation, so N workers do N times the work of one), and
the table reports medians over the steps after warm-up: tokens/s of the run and per worker, the step
time, and the shares of each worker's step spent on gradient reduction not hidden behind the replay
and waiting for shards. Each worker gets its own share of the cores unless --compute-threads says.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perkunas_ray.config import RunConfig
from perkunas_ray.errors import ConfigError
from perkunas_ray.local_ray import start_local_ray
from perkunas_ray.run_setup import bundled_data_dir
from perkunas_ray.stream.build import open_run
from perkunas_ray.telemetry.schema import TRAIN_LOG, read_log

ConfigMaker = Callable[[argparse.Namespace, str, Path], RunConfig]


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--num-workers must list worker counts like 1,2, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise ConfigError(f"--num-workers must list worker counts >= 1, got {text!r}")
    return counts


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def measure(cfg: RunConfig, warmup: int) -> dict[str, Any]:
    """Train `cfg`'s run on the connected Ray cluster; its medians after `warmup` steps."""
    from actors.driver import train_on_ray  # Ray loads only when this bench runs

    started = time.perf_counter()
    with open_run(cfg, init=True) as run:
        train_on_ray(run, verbose=False)
    log = read_log(Path(cfg.checkpoint.run_dir) / TRAIN_LOG)
    steps = [r for r in log if r["event"] == "step" and r["step"] > warmup]
    workers = [r for r in log if r["event"] == "worker" and r["step"] > warmup and r["step_time_s"] > 0]
    n = cfg.ray.num_workers
    return {
        "num_workers": n, "compute_threads": cfg.ray.compute_threads,
        "tokens_per_step": cfg.train.micro_batch_size * cfg.train.gradient_accumulation_steps * n
        * cfg.model.max_seq_len,
        "tokens_per_s": _median([r["tokens_per_s"] for r in steps]),
        "tokens_per_s_per_worker": _median([r["tokens_per_s"] for r in workers]),
        "step_s": _median([r["step_time_s"] for r in steps]),
        "reduce_share": _median([r["reduce_s"] / r["step_time_s"] for r in workers]),
        "reduce_s": _median([r["reduce_s"] for r in workers]),
        "wait_share": _median([r["wait_s"] / r["step_time_s"] for r in workers]),
        "wall_s": time.perf_counter() - started,
    }


def print_scaling(rows: list[dict[str, Any]]) -> None:
    header = ("workers", "tokens/s", "per worker", "step s", "reduction s", "reduction share", "wait share")
    print("".join(f"{h:>16}" for h in header))
    base = rows[0]["tokens_per_s"]
    for r in rows:
        print(f"{r['num_workers']:>16}{r['tokens_per_s']:>16,.0f}{r['tokens_per_s_per_worker']:>16,.0f}"
              f"{r['step_s']:>16.3f}{r['reduce_s']:>16.3f}{r['reduce_share']:>16.1%}{r['wait_share']:>16.1%}")
    print("speed-up over " + f"{rows[0]['num_workers']} worker(s): "
          + ", ".join(f"{r['num_workers']} -> {r['tokens_per_s'] / base:.2f}x" for r in rows[1:]))


def run_scaling(args: argparse.Namespace, make_config: ConfigMaker) -> int:
    counts = parse_counts(args.num_workers)
    import ray  # after the arguments are checked: a typo costs no Ray import
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="perkunas-bench-dp-"))
    started_ray = not ray.is_initialized()
    if started_ray:
        start_local_ray(num_cpus=max(os.cpu_count() or 1, max(counts)))
    rows = []
    try:
        for n in counts:
            probe = make_config(args, args.data_dir, work / f"workers-{n}")
            cfg = make_config(args, args.data_dir or str(bundled_data_dir(probe)), work / f"workers-{n}")
            cfg.ray.num_workers = n
            cfg.ray.compute_threads = args.compute_threads or max(1, (os.cpu_count() or 1) // n)
            rows.append(measure(cfg.validate(), args.warmup))
    finally:
        if started_ray:
            ray.shutdown()
    print_scaling(rows)
    print(json.dumps({"bench": "train_scaling", "optimizer": args.optimizer, "d_model": args.d_model,
                      "n_layers": args.n_layers, "warmup": args.warmup, "steps": args.steps, "rows": rows}))
    return 0
