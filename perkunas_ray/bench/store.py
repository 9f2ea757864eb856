"""`perkunas bench store`: the shard store's optimizer update, in seconds per step, on one thread and on more.

Each preset's store holds its fp32 master weights and optimizer state, as a run's does. A measured step hands it a
gradient for every shard and updates every shard with a global clipping coefficient (the multiply and the optimizer
step: the store's whole share of a step). One thread is one: torch's intra-op threads are 1 for the whole benchmark,
as in the store actor, so N store threads use N cores. Every thread count's weights end bit for bit equal to the
first's (an exact checksum of their bits is compared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from perkunas_ray.config import RunConfig
from perkunas_ray.model.decoder import count_parameters
from perkunas_ray.model.presets import load_preset, preset_names
from perkunas_ray.model.shards import stream_shard_specs
from perkunas_ray.stream.store import ShardStore, init_shard

CLIP_COEF = 1.0  # what global clipping hands the store when the norm is under the limit: the multiply still runs


def register(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser("store", help="the shard store's optimizer update: seconds per step on 1 and N threads",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="small,xl",
                   help="model presets, e.g. small (97M: ~1.6 GB of host memory) or xl (771M: ~12 GB)")
    p.add_argument("--threads", default="1,2", help="store_threads to compare; the first is the baseline")
    p.add_argument("--steps", type=int, default=5, help="measured steps per thread count (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="steps before measuring (the first allocates the moments)")
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "lion", "adafactor"))
    p.set_defaults(func=run)


def bits_checksum(store: ShardStore) -> int:
    """An exact fingerprint of every weight's bits (equal weights, equal sums; a changed bit changes it)."""
    return sum(int(p.detach().view(torch.int32).sum(dtype=torch.int64))
               for params in store.params.values() for p in params.values())


def measure(preset: str, threads: int, args: argparse.Namespace) -> dict:
    cfg = RunConfig()
    cfg.model = load_preset(preset)
    cfg.train.optimizer, cfg.train.device = args.optimizer, "cpu"
    cfg.stream.store_threads = threads
    cfg.validate()
    names = [s.name for s in stream_shard_specs(cfg.model)]
    store = ShardStore(cfg, {n: init_shard(cfg, n, cfg.train.seed) for n in names})
    gen = torch.Generator().manual_seed(1)
    grads = {n: {k: torch.randn(p.shape, generator=gen).mul_(1e-3) for k, p in store.params[n].items()}
             for n in names}
    times = []
    try:
        for step in range(args.warmup + args.steps):
            start = time.perf_counter()
            for name in names:
                store.put_grads(name, grads[name])
                store.update(name, cfg.train.learning_rate, CLIP_COEF)
            store.commit()
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
        checksum = bits_checksum(store)
    finally:
        store.close()
    return {"preset": preset, "parameters": count_parameters(cfg.model), "threads": threads,
            "update_s": statistics.median(times), "checksum": checksum}


def run(args: argparse.Namespace) -> int:
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in preset_names()]
    if unknown:
        raise SystemExit(f"--presets: no preset {', '.join(unknown)} (presets: {', '.join(preset_names())})")
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    if not thread_counts or min(thread_counts) < 1:
        raise SystemExit(f"--threads must be thread counts >= 1, got {args.threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for preset in presets:
            results = [measure(preset, threads, args) for threads in thread_counts]
            for r in results:
                r["speedup"] = results[0]["update_s"] / r["update_s"]
                r["bit_identical"] = r["checksum"] == results[0]["checksum"]
            rows += results
    finally:
        torch.set_num_threads(before)
    print(f"shard store update ({args.optimizer}, global clipping), median of {args.steps} steps; "
          f"torch intra-op threads 1, store_threads as given")
    print(f"{'preset':<8}{'parameters':>14}{'threads':>9}{'update s/step':>15}{'speedup':>9}{'bit-identical':>15}")
    for r in rows:
        print(f"{r['preset']:<8}{r['parameters']:>14,}{r['threads']:>9}{r['update_s']:>15.4f}"
              f"{r['speedup']:>8.2f}x{'yes' if r['bit_identical'] else 'NO':>15}")
    print(json.dumps({"benchmark": "store", "optimizer": args.optimizer, "steps": args.steps,
                      "rows": [{k: v for k, v in r.items() if k != "checksum"} for r in rows]}))
    return 0 if all(r["bit_identical"] for r in rows) else 1
