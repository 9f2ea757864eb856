"""`perkunas plan`: will this model train within this memory budget? Predicted peak, largest micro-batch, layout."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from perkunas_ray.config import ModelConfig, RunConfig, from_dict, load_mapping
from perkunas_ray.device import TORCH_DTYPES, resolve_device
from perkunas_ray.errors import ConfigError
from perkunas_ray.model.decoder import count_parameters
from perkunas_ray.model.presets import load_preset, preset_names
from perkunas_ray.stream.plan import MemoryPlan, check_budget, largest_micro_batch, layouts, parse_bytes
from perkunas_ray.stream.plan_measure import measure_peak, measured_largest_micro_batch

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
    p.add_argument("--dtype", default="fp32", choices=tuple(TORCH_DTYPES),
                   help="compute dtype (the model of activations is exact for fp32, approximate otherwise)")
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "lion", "adafactor"))
    p.add_argument("--max-resident-shards", type=int, default=2)
    p.add_argument("--measure", action="store_true",
                   help="also run real streamed steps here and print the measured peak beside the prediction")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
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
    if "measured_peak_bytes" in r:
        print(f"measured peak {mib(r['measured_peak_bytes'])} (predicted / measured "
              f"{r['predicted_peak_bytes'] / r['measured_peak_bytes']:.3f}); measured largest micro-batch "
              f"{r['measured_largest_micro_batch'] or 'none'}")


def run(args: argparse.Namespace) -> int:
    cfg = plan_config(args)
    budget = cfg.stream.max_resident_bytes
    result = report(cfg, check_budget(cfg, budget, args.device), budget, args.device)
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
