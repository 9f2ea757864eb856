"""`perkunas bench train`: the streaming runtime vs the reference trainer with per-block activation checkpointing.

Same model, same batches, one process run (interleaved step by step on CPU; on CUDA the reference's steps
first, so the streamed steps' allocator peak holds none of its state). The streaming runtime gets a byte
budget of (training state) / --over-budget (on CUDA plus the cuBLAS workspaces, which the allocator's peak
includes); the table and the JSON line report medians over the steps after warm-up: tokens/s of both and
their ratio, peak memory of both and their ratio, and where the streamed step's time goes: forward, replay + backward (each with its hand-offs and object-store
copies), the store's update math (overlapped with the backward), and orchestration (the rest).
--sizes runs the comparison at several model sizes and prints one row per size with MFU/HFU
estimates. On Ray (not --in-process) the streamed run trains on one Ray Train worker, and the ratio
compares it with the reference's steps on one Ray Train worker of the same cluster (every Ray
process wakes 100 times a second; on a small machine those wake-ups preempt the compute threads of
both alike); the reference outside Ray is printed beside it with its own ratio. --num-workers 1,2
measures data-parallel scaling instead (perkunas_ray/bench/train_scaling.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from perkunas_ray.bench.train_scaling import run_scaling
from perkunas_ray.bench.train_sizes import run_sizes
from perkunas_ray.config import ModelConfig, RunConfig
from perkunas_ray.device import resolve_device
from perkunas_ray.local_ray import start_local_ray
from perkunas_ray.model.decoder import count_parameters
from perkunas_ray.run_setup import bundled_data_dir
from perkunas_ray.stream.build import local_backend, open_run
from perkunas_ray.stream.memory import workspace_bytes
from perkunas_ray.telemetry.schema import TRAIN_LOG, read_log


def register(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser("train", help="streaming runtime vs reference trainer (activation checkpointing)",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="measured steps per runtime (after warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=8)
    p.add_argument("--d-ff", type=int, default=768)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--gradient-accumulation-steps", type=int, default=4)
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "lion", "adafactor"))
    p.add_argument("--over-budget", type=float, default=4.0, help="training state / streaming byte budget")
    p.add_argument("--data-dir", default="", help="prepared data dir (default: the bundled corpus, seq 128)")
    p.add_argument("--device", default="auto")
    p.add_argument("--in-process", action="store_true", help="stream without Ray actors (same core)")
    p.add_argument("--compute-threads", type=int, default=0)
    p.add_argument("--trace-storage", default="", help="boundary storage (default: object-store on Ray, cpu in-process)")
    p.add_argument("--work-dir", default="", help="where the two run dirs go (default: a temp dir)")
    p.add_argument("--sizes", default="", help="compare at these model sizes instead, e.g. 8M,30M,100M "
                                               "(shapes chosen per size; fewer steps above 50M parameters)")
    p.add_argument("--num-workers", default="",
                   help="data-parallel scaling instead: train on Ray Train with each of these worker counts, e.g. "
                        "1,2 (per-worker batch fixed); tokens/s and the share of step time in gradient reduction")
    p.add_argument("--peak-flops", type=float, default=0.0,
                   help="with --sizes: the device's peak in GFLOP/s for MFU/HFU (default: measured fp32 matmul)")
    p.set_defaults(func=run)


def bench_config(args: argparse.Namespace, data_dir: str, run_dir: Path) -> RunConfig:
    vocab_size, seq_len = 8192, 128
    if data_dir:
        from perkunas_ray.data import load_manifest

        manifest = load_manifest(data_dir)
        vocab_size, seq_len = manifest.vocab_size, manifest.seq_len
    cfg = RunConfig()
    cfg.model = ModelConfig(vocab_size=vocab_size, d_model=args.d_model, n_layers=args.n_layers, n_heads=4,
                            n_kv_heads=2, d_ff=args.d_ff, max_seq_len=seq_len, tie_embeddings=True).validate()
    cfg.stream.trace_storage = args.trace_storage or ("cpu" if args.in_process else "object-store")
    cfg.ray.compute_threads = args.compute_threads
    t = cfg.train
    t.data_dir, t.device, t.optimizer = data_dir, args.device, args.optimizer
    t.micro_batch_size, t.gradient_accumulation_steps = args.micro_batch_size, args.gradient_accumulation_steps
    t.max_steps = args.warmup + args.steps
    t.lr_schedule, t.learning_rate, t.max_grad_norm = "constant", 1e-3, 1.0
    t.validate_every = t.save_every = t.max_validation_batches = 0
    cfg.checkpoint.run_dir, cfg.checkpoint.durable_flush_every = str(run_dir), 0
    cfg.checkpoint.keep_last_checkpoints = 1
    return cfg.validate()


def training_state_bytes(cfg: RunConfig) -> int:
    slots = {"adamw": 2, "lion": 1, "adafactor": 1}[cfg.train.optimizer]  # adafactor: factored, ~O(rows+cols)
    return count_parameters(cfg.model) * 4 * (2 + slots)


class ReferenceRunner:
    """Reference steps with activation checkpointing; peak = resident state + saved activations per micro-batch."""

    def __init__(self, cfg: RunConfig) -> None:
        from perkunas_ray.reference import ReferenceTrainer

        self.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, activation_checkpointing=True))
        self.trainer = ReferenceTrainer(self.cfg, Path(self.cfg.checkpoint.run_dir), verbose=False)

    def step(self) -> dict[str, Any]:
        from perkunas_ray.stream.memory import MemoryTracker, tensor_bytes

        trainer = self.trainer
        tracker = MemoryTracker(trainer.device)
        tracker.remember(list(trainer.names.values()))
        start = time.perf_counter()
        with tracker.saved_activations() as counted:
            record = trainer.train_step()
        record["wall_s"] = time.perf_counter() - start
        params = sum(tensor_bytes(p) for p in trainer.names.values())
        optim = sum(tensor_bytes(v) for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v))
        if trainer.device.type != "cuda":  # grads were freed by zero_grad; they were as large as the params
            record["peak_bytes"] = 2 * params + optim + sum(counted) // self.cfg.train.gradient_accumulation_steps
        return record


class StreamRunner:
    """The in-process streaming loop, stepped from outside; each step's time includes waiting for its updates."""

    def __init__(self, cfg: RunConfig) -> None:
        self.run = run = open_run(cfg, init=True)
        self.backend = local_backend(run)
        self.loop = run.loop(self.backend, verbose=False)

    def step(self) -> dict[str, Any]:
        start = time.perf_counter()
        record = self.loop.train_step()
        self.loop.wait_updates()
        record["wall_s"] = time.perf_counter() - start
        return record

    def close(self) -> None:
        self.backend.close()
        self.run.close()


def ray_stream_records(cfg: RunConfig) -> list[dict[str, Any]]:
    """The whole streamed run on Ray Train (one worker) and its actors; its step records from the run's log.
    A step's time there includes waiting for the previous step's updates, as the in-process runner's does."""
    from actors.driver import train_on_ray

    with open_run(cfg, init=True) as run:
        train_on_ray(run, verbose=False)
    steps = [r for r in read_log(Path(cfg.checkpoint.run_dir) / TRAIN_LOG) if r["event"] == "step"]
    return [{**r, "wall_s": r["step_time_s"]} for r in steps]


def reference_worker(config: dict[str, Any]) -> None:
    """Ray Train's function for the reference's steps on Ray: the process settings of a streamed run's worker."""
    from perkunas_ray.stream.worker_process import prepare_worker_process

    cfg = RunConfig.from_mapping(config["cfg"]).validate()
    prepare_worker_process(cfg.ray.compute_threads)
    runner = ReferenceRunner(cfg)
    records = [runner.step() for _ in range(config["steps"])]
    Path(config["out"]).write_text(json.dumps(records, default=float))


def ray_reference_records(cfg: RunConfig, steps: int) -> list[dict[str, Any]]:
    """The reference's steps on one Ray Train worker: the same cluster around it as around the streamed run (on
    2 cores, every Ray process's 100 Hz wake-ups preempt the compute threads; that tax is not the runtime's)."""
    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from actors.driver import absolute_paths
    from perkunas_ray.config import to_dict

    cfg = absolute_paths(cfg)  # the worker need not share this process's cwd
    run_dir = Path(cfg.checkpoint.run_dir)
    out = run_dir / "reference_records.json"
    TorchTrainer(reference_worker, train_loop_config={"cfg": to_dict(cfg), "steps": steps, "out": str(out)},
                 scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                 run_config=TrainRunConfig(name="perkunas-bench-reference", storage_path=str(run_dir / "ray_train"))
                 ).fit()
    return json.loads(out.read_text())


def median(records: list[dict[str, Any]], key: str, warmup: int) -> float:
    return float(statistics.median(r[key] for r in records[warmup:]))


def breakdown(records: list[dict[str, Any]], warmup: int) -> dict[str, float]:
    """Median seconds per streamed step by where they go. The store's update math overlaps the backward of the
    shards below (an update it does not hide shows as waiting for shards), so orchestration is the step time
    outside forward and replay + backward: handing the batch over, gathering figures, logging."""
    parts = {key: median(records, key, warmup) for key in ("forward_s", "backward_s", "update_s", "wait_s")}
    parts["orchestration_s"] = float(statistics.median(
        max(0.0, r["step_time_s"] - r["forward_s"] - r["backward_s"]) for r in records[warmup:]))
    return parts


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Both trainers on one model, interleaved step by step; the result as the JSON line reports it."""
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="perkunas-bench-"))
    probe = bench_config(args, args.data_dir, work / "stream")
    data_dir = args.data_dir or str(bundled_data_dir(probe))
    stream_cfg = bench_config(args, data_dir, work / "stream")
    state = training_state_bytes(stream_cfg)
    # On CUDA the runtime holds the allocator's figure against the budget, and the cuBLAS workspaces (64 MiB on
    # Hopper, paid by the reference alike) are in it: they come on top, or a small model could not stream at all.
    device = resolve_device(args.device)
    workspace = workspace_bytes(device)
    stream_cfg.stream.max_resident_bytes = int(state / args.over_budget) + workspace
    stream_cfg.stream.max_resident_shards = 2
    ref_cfg = bench_config(args, data_dir, work / "reference")
    started = time.perf_counter()
    reference = ReferenceRunner(ref_cfg)
    ref, stream, outside = [], [], []  # outside: the reference outside Ray, when the streamed run is on Ray
    if args.in_process and device.type == "cuda":
        # One after the other: interleaved, the allocator's peak of the streamed steps would include the
        # reference's resident state. A GPU's speed does not drift with the host's load as 2 CPU cores' does.
        torch.cuda.reset_peak_memory_stats()  # the reference's figure is the allocator's peak since the last reset
        ref = [reference.step() for _ in range(args.warmup + args.steps)]
        del reference
        gc.collect()
        torch.cuda.empty_cache()
        streaming = StreamRunner(stream_cfg)
        try:
            stream = [streaming.step() for _ in range(args.warmup + args.steps)]
        finally:
            streaming.close()
    elif args.in_process:
        streaming = StreamRunner(stream_cfg)
        try:  # interleaved, so load from elsewhere on the machine falls on both alike
            for _ in range(args.warmup + args.steps):
                ref.append(reference.step())
                stream.append(streaming.step())
        finally:
            streaming.close()
    else:  # Ray Train runs the loop in its worker: the reference's steps outside Ray, then on Ray, then streamed
        outside = [reference.step() for _ in range(args.warmup + args.steps)]
        import ray

        started_ray = not ray.is_initialized()  # inside a Ray job: its cluster
        if started_ray:
            start_local_ray(stream_cfg.ray.namespace)
        try:
            ref = ray_reference_records(bench_config(args, data_dir, work / "reference-ray"), args.warmup + args.steps)
            stream = ray_stream_records(stream_cfg)
        finally:
            if started_ray:
                ray.shutdown()
    for r in ref + stream + outside:
        r["tokens_per_s"] = r["tokens_per_s"] * r["step_time_s"] / r["wall_s"]
        r["step_time_s"] = r["wall_s"]
    w = args.warmup
    ref_tps, stream_tps = median(ref, "tokens_per_s", w), median(stream, "tokens_per_s", w)
    ref_peak, stream_peak = max(r["peak_bytes"] for r in ref[w:]), max(r["peak_bytes"] for r in stream[w:])
    outside_tps = median(outside, "tokens_per_s", w) if outside else None
    wait_share = float(statistics.median(r["wait_s"] / r["step_time_s"] for r in stream[w:]))
    return {
        "bench": "train", "device": ref_cfg.train.device, "optimizer": args.optimizer,
        "params": count_parameters(stream_cfg.model), "d_model": args.d_model, "n_layers": args.n_layers,
        "d_ff": args.d_ff, "seq_len": stream_cfg.model.max_seq_len,
        "tokens_per_step": args.micro_batch_size * args.gradient_accumulation_steps * stream_cfg.model.max_seq_len,
        "trace_storage": stream_cfg.stream.trace_storage,
        "steps": args.steps, "warmup": args.warmup, "training_state_bytes": state,
        "budget_bytes": stream_cfg.stream.max_resident_bytes, "over_budget": args.over_budget,
        "cuda_workspace_bytes": workspace,
        "reference_tokens_per_s": ref_tps, "stream_tokens_per_s": stream_tps, "throughput_ratio": stream_tps / ref_tps,
        "reference_peak_bytes": ref_peak, "stream_peak_bytes": stream_peak, "memory_ratio": stream_peak / ref_peak,
        "stream_within_budget": stream_peak <= stream_cfg.stream.max_resident_bytes,
        "wait_share": wait_share, "stream_step_s": median(stream, "step_time_s", w),
        "reference_step_s": median(ref, "step_time_s", w), "stream_breakdown_s": breakdown(stream, w),
        "wall_s": time.perf_counter() - started, "runtime": "in-process" if args.in_process else "ray-train",
        "reference_outside_ray_tokens_per_s": outside_tps,
        "throughput_ratio_outside_ray": stream_tps / outside_tps if outside_tps else None,
    }


def print_comparison(result: dict[str, Any]) -> None:
    mib = 2**20
    parts = result["stream_breakdown_s"]
    rows = [("", "reference (act. ckpt)", "streaming"),
            ("tokens/s (median)", f"{result['reference_tokens_per_s']:,.0f}", f"{result['stream_tokens_per_s']:,.0f}"),
            ("step time s (median)", f"{result['reference_step_s']:.3f}", f"{result['stream_step_s']:.3f}"),
            ("  forward s", "-", f"{parts['forward_s']:.3f}"),
            ("  replay + backward s", "-", f"{parts['backward_s']:.3f} (waiting for shards {parts['wait_s']:.3f})"),
            ("  update math s", "-", f"{parts['update_s']:.3f} (overlapped)"),
            ("  orchestration s", "-", f"{parts['orchestration_s']:.3f}"),
            ("peak bytes", f"{result['reference_peak_bytes'] / mib:.1f} MiB", f"{result['stream_peak_bytes'] / mib:.1f} MiB"),
            ("budget", "-", f"{result['budget_bytes'] / mib:.1f} MiB (state {result['training_state_bytes'] / mib:.1f} MiB"
             + (f", + CUDA workspace {result['cuda_workspace_bytes'] / mib:.1f} MiB" if result["cuda_workspace_bytes"]
                else "") + ")"),
            ("wait share of step", "-", f"{result['wait_share']:.1%}")]
    for row in rows:
        print(f"{row[0]:<24}{row[1]:>24}{row[2]:>36}")
    if result["reference_outside_ray_tokens_per_s"]:
        print(f"{'reference outside Ray':<24}{result['reference_outside_ray_tokens_per_s']:>24,.0f} tok/s"
              f"{'ratio to it ' + format(result['throughput_ratio_outside_ray'], '.3f'):>36}")
    print(f"throughput ratio {result['throughput_ratio']:.3f} | memory ratio {result['memory_ratio']:.3f} | "
          f"model state {result['over_budget']:g}x the budget")


def run(args: argparse.Namespace) -> int:
    if args.num_workers:
        return run_scaling(args, bench_config)
    if args.sizes:
        return run_sizes(args, compare)
    result = compare(args)
    print_comparison(result)
    print(json.dumps(result))
    return 0
