"""`perkunas plan`: will this model train within this memory budget? Predicted peak, largest micro-batch, layout; on
CUDA, from how many tokens a step the shard copies and the host optimizer hide behind compute."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from perkunas_ray.config import DTYPES, ModelConfig, RunConfig, from_dict, load_mapping
from perkunas_ray.device import resolve_device
from perkunas_ray.errors import ConfigError
from perkunas_ray.model.decoder import count_parameters
from perkunas_ray.model.presets import load_preset, preset_names
from perkunas_ray.stream.plan import MemoryPlan, check_budget, largest_micro_batch, layouts, parse_bytes
from perkunas_ray.stream.plan_measure import measure_peak, measure_update_rate, measured_largest_micro_batch
from perkunas_ray.stream.plan_overlap import (
    DEFAULT_DEVICE,
    DEFAULT_MFU,
    DEVICES,
    UPDATE_PARAMS_PER_S_PER_THREAD,
    step_time,
)
from perkunas_ray.stream.precision import compute_dtype_name
from perkunas_ray.stream.store_threads import resolve_store_threads

MIB = 2**20


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plan", help="predict the streaming runtime's peak memory for a model and budget",
                              description=__doc__)
    p.add_argument("--model", required=True, help=f"a preset ({', '.join(preset_names())}) or a YAML/JSON file "
                                                  "holding a model config (or a run config with a model section)")
    p.add_argument("--budget", required=True, help="the compute device's memory budget, e.g. 8GiB, 512MiB")
    p.add_argument("--seq-len", type=int, default=0, help="tokens per sequence (default: the model's max_seq_len)")
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--layers-per-shard", type=int, default=None, help="default: the model's")
    p.add_argument("--vocab-size", type=int, default=None, help="override the model's vocab size")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="compute dtype (auto: bf16 on cuda, fp32 on cpu; the model of activations is exact for fp32, "
                        "approximate otherwise)")
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "lion", "adafactor"))
    p.add_argument("--max-resident-shards", type=int, default=2)
    p.add_argument("--measure", action="store_true",
                   help="also run real streamed steps here and print the measured peak beside the prediction")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    t = p.add_argument_group("time (with --device cuda): the tokens a step from which copies and the update hide")
    t.add_argument("--gpu", default=DEFAULT_DEVICE, choices=tuple(DEVICES), help="a known GPU's peaks and host link")
    t.add_argument("--device-tflops", type=float, default=0.0, help="the GPU's peak TFLOP/s in the compute dtype "
                                                                    "(default: --gpu's)")
    t.add_argument("--link-gbps", type=float, default=0.0, help="host <-> device GB/s each way (default: --gpu's)")
    t.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="the fraction of the peak the step's matmuls reach")
    t.add_argument("--store-threads", type=int, default=0, help="the store's update threads (0: auto, as the store "
                                                                "picks on a CUDA node of --host-cores cores)")
    t.add_argument("--host-cores", type=int, default=16, help="the GPU node's cores (for --store-threads 0)")
    t.add_argument("--update-rate", type=float, default=UPDATE_PARAMS_PER_S_PER_THREAD / 1e9,
                   help="the store's update rate per thread, G parameters/s (default: AdamW on one EPYC core)")
    t.add_argument("--measure-update", action="store_true",
                   help="measure the update rate on this machine's cores instead (the largest block shard)")
    p.set_defaults(func=run)


def load_model(spec: str, vocab_size: int | None, layers_per_shard: int | None) -> ModelConfig:
    overrides = {k: v for k, v in (("vocab_size", vocab_size), ("layers_per_shard", layers_per_shard))
                 if v is not None}
    if spec in preset_names():
        return load_preset(spec, **overrides)
    if not Path(spec).is_file():
        raise ConfigError(f"--model {spec!r} is neither a preset ({', '.join(preset_names())}) nor a file")
    data = load_mapping(spec)
    data = data.get("model", data) if isinstance(data, dict) else data
    data = {k: v for k, v in data.items() if k != "description"} if isinstance(data, dict) else data
    model = from_dict(ModelConfig, data, f"{spec}: model")
    return dataclasses.replace(model, **overrides).validate(f"{spec}: model")


def plan_config(args: argparse.Namespace) -> RunConfig:
    cfg = RunConfig()
    cfg.model = load_model(args.model, args.vocab_size, args.layers_per_shard)
    seq_len = args.seq_len or cfg.model.max_seq_len
    if seq_len > cfg.model.max_seq_len:
        raise ConfigError(f"--seq-len must be <= the model's max_seq_len {cfg.model.max_seq_len}, got {seq_len}")
    for flag, value in (("--seq-len", seq_len), ("--micro-batch-size", args.micro_batch_size),
                        ("--gradient-accumulation-steps", args.gradient_accumulation_steps)):
        if value <= 0:
            raise ConfigError(f"{flag} must be > 0, got {value}")
    t = cfg.train
    t.seq_len, t.micro_batch_size, t.gradient_accumulation_steps = seq_len, args.micro_batch_size, \
        args.gradient_accumulation_steps
    t.device, t.dtype, t.optimizer = args.device, args.dtype, args.optimizer
    cfg.stream.max_resident_shards = args.max_resident_shards
    cfg.stream.max_resident_bytes = parse_bytes(args.budget)
    cfg.stream.validate()
    for flag, value, ok, expected in (
            ("--mfu", args.mfu, 0 < args.mfu <= 1, "in (0, 1]"),
            ("--device-tflops", args.device_tflops, args.device_tflops >= 0, ">= 0 (0: --gpu's)"),
            ("--link-gbps", args.link_gbps, args.link_gbps >= 0, ">= 0 (0: --gpu's)"),
            ("--update-rate", args.update_rate, args.update_rate > 0, "> 0"),
            ("--store-threads", args.store_threads, args.store_threads >= 0, ">= 0 (0: auto)"),
            ("--host-cores", args.host_cores, args.host_cores >= 1, ">= 1")):
        if not ok:
            raise ConfigError(f"{flag} must be {expected}, got {value}")
    return cfg


def report(cfg: RunConfig, plan: MemoryPlan, budget: int, device: str) -> dict:
    peak = plan.peak
    return {
        "model_parameters": count_parameters(cfg.model), "num_shards": cfg.model.num_stream_shards,
        "layers_per_shard": cfg.model.layers_per_shard, "seq_len": cfg.train.seq_len,
        "micro_batch_size": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": cfg.train.gradient_accumulation_steps, "device": device,
        "budget_bytes": budget, "predicted_peak_bytes": plan.peak_bytes, "floor_bytes": plan.floor_bytes,
        "peak_at": {"shard": peak.shard, "phase": peak.phase}, "peak_parts": {
            "parameters": peak.shards, "gradients": peak.grads, "boundaries": peak.boundaries,
            "saved_activations": peak.activations, "lm_head_chunk": peak.head_chunk, "cuda_workspace": peak.workspace,
            "read_ahead": peak.read_ahead},
        "largest_micro_batch": largest_micro_batch(cfg, budget, device),
        "layouts": [{"layers_per_shard": lps, "predicted_peak_bytes": p, "largest_micro_batch": mb}
                    for lps, p, mb in layouts(cfg, budget, device)],
        "host_bytes": plan.host_bytes, "host_total_bytes": sum(plan.host_bytes.values()),
    }


def time_report(cfg: RunConfig, args: argparse.Namespace) -> dict:
    """The time model's figures for a step of this config on --gpu (plan_overlap.py)."""
    gpu = DEVICES[args.gpu]
    dtype = compute_dtype_name(cfg.train, "cuda")
    tflops = args.device_tflops or (gpu.fp32_tflops if dtype == "fp32" else gpu.bf16_tflops)
    link_gbps = args.link_gbps or gpu.link_gbps
    threads = resolve_store_threads(args.store_threads, "cuda", args.host_cores)
    per_thread = measure_update_rate(cfg, 1) if args.measure_update else args.update_rate * 1e9
    st = step_time(cfg, tflops * 1e12, args.mfu, link_gbps * 1e9, per_thread * threads)
    return {"gpu": gpu.name, "dtype": dtype, "peak_tflops": tflops, "mfu": args.mfu, "link_gbps": link_gbps,
            "store_threads": threads, "update_params_per_s": per_thread * threads,
            "update_rate": "measured here, one thread" if args.measure_update else "given",
            "tokens_per_step": st.tokens, "forward_s": st.forward_s, "backward_s": st.backward_s,
            "forward_copy_s": st.forward_copy_s, "backward_copy_s": st.backward_copy_s, "update_s": st.update_s,
            "step_s": st.step_s, "bound": st.bound, "copy_hide_tokens": st.copy_hide_tokens,
            "update_hide_tokens": st.update_hide_tokens, "tokens_per_s": st.tokens / st.step_s,
            "predicted_mfu": st.model_flops / st.step_s / (tflops * 1e12)}


def print_time(t: dict) -> None:
    print(f"time on {t['gpu']} ({t['dtype']} {t['peak_tflops']:,.0f} TFLOP/s at MFU {t['mfu']:.0%}, host link "
          f"{t['link_gbps']:,.0f} GB/s; store {t['store_threads']} thread(s) at "
          f"{t['update_params_per_s'] / 1e9:,.2f} G parameters/s, {t['update_rate']}):")
    print(f"  a step of {t['tokens_per_step']:,} tokens: compute {t['forward_s'] + t['backward_s']:.3f} s (forward "
          f"{t['forward_s']:.3f}, replay + backward {t['backward_s']:.3f}); shard copies {t['forward_copy_s']:.3f} s "
          f"in forward, {t['backward_copy_s']:.3f} s in backward; host update {t['update_s']:.3f} s")
    print(f"  shard copies hide from {t['copy_hide_tokens']:,} tokens a step, the host update from "
          f"{t['update_hide_tokens']:,}; this step is bound by {t['bound']}: ~{t['tokens_per_s']:,.0f} tokens/s, "
          f"MFU {t['predicted_mfu']:.0%}")


def print_report(r: dict) -> None:
    def mib(n: int) -> str:
        return f"{n / MIB:,.1f} MiB"

    print(f"model: {r['model_parameters']:,} parameters in {r['num_shards']} stream shards "
          f"({r['layers_per_shard']} layer(s) per shard); seq_len {r['seq_len']}, micro-batch "
          f"{r['micro_batch_size']} x {r['gradient_accumulation_steps']} per step; {r['device']}")
    verdict = "fits" if r["predicted_peak_bytes"] <= r["budget_bytes"] else "does NOT fit"
    print(f"predicted peak of the compute actor {mib(r['predicted_peak_bytes'])} {verdict} the budget "
          f"{mib(r['budget_bytes'])}; at {r['peak_at']['shard']} ({r['peak_at']['phase']}):")
    for part, n in r["peak_parts"].items():
        print(f"  {part.replace('_', ' '):<22}{mib(n):>16}")
    if r["device"] == "cpu":
        print("  (the LM head's logits chunk is recomputed in backward and not tracked on CPU)")
    print(f"floor (nothing read ahead) {mib(r['floor_bytes'])}; largest micro-batch within the budget: "
          f"{r['largest_micro_batch'] or 'none'}")
    print("shard layouts:  layers/shard   predicted peak   largest micro-batch")
    for row in r["layouts"]:
        print(f"{row['layers_per_shard']:>28}{mib(row['predicted_peak_bytes']):>17}{row['largest_micro_batch']:>22}")
    print(f"host RAM for the shard store: {mib(r['host_total_bytes'])} ("
          + ", ".join(f"{k.replace('_', ' ')} {mib(v)}" for k, v in r["host_bytes"].items()) + ")")
    if "time" in r:
        print_time(r["time"])
    if "measured_peak_bytes" in r:
        print(f"measured peak {mib(r['measured_peak_bytes'])} (predicted / measured "
              f"{r['predicted_peak_bytes'] / r['measured_peak_bytes']:.3f}); measured largest micro-batch "
              f"{r['measured_largest_micro_batch'] or 'none'}")


def run(args: argparse.Namespace) -> int:
    cfg = plan_config(args)
    budget = cfg.stream.max_resident_bytes
    result = report(cfg, check_budget(cfg, budget, args.device), budget, args.device)
    if args.device == "cuda":
        result["time"] = time_report(cfg, args)
    if args.measure:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--measure with --device cuda needs CUDA, which this machine lacks; "
                              "drop --measure for the prediction alone")
        device = resolve_device(args.device)
        result["measured_peak_bytes"] = measure_peak(cfg, device)
        result["measured_largest_micro_batch"] = measured_largest_micro_batch(cfg, budget, device,
                                                                              result["largest_micro_batch"])
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0
