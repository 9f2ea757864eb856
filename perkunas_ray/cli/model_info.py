"""`perkunas model-info PRESET`: shapes, stream shards and parameter counts of a model preset."""

from __future__ import annotations

import argparse
import json

from perkunas_ray.model.decoder import parameter_shapes
from perkunas_ray.model.presets import load_preset, preset_description, preset_names
from perkunas_ray.model.shards import shard_parameter_shapes, stream_shard_specs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("model-info", help="print a preset's shapes, shards and parameter counts")
    p.add_argument("preset", help=f"one of: {', '.join(preset_names())}")
    p.add_argument("--vocab-size", type=int, default=None, help="override the preset's vocab size")
    p.add_argument("--layers-per-shard", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def run(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("vocab_size", args.vocab_size), ("layers_per_shard", args.layers_per_shard))
                 if v is not None}
    cfg = load_preset(args.preset, **overrides)
    shapes = parameter_shapes(cfg)
    total = sum(_numel(s) for s in shapes.values())
    embed = _numel(shapes["model.embed_tokens.weight"])
    shards = [(spec.name, sum(_numel(s) for s in shard_parameter_shapes(cfg, spec).values()))
              for spec in stream_shard_specs(cfg)]
    if args.json:
        print(json.dumps({"preset": args.preset, "config": cfg.__dict__, "num_parameters": total,
                          "num_embedding_parameters": embed, "shards": dict(shards)}))
        return 0
    print(f"{args.preset}: {preset_description(args.preset)}")
    for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len",
                "rope_theta", "qk_norm", "attn_softcap", "tie_embeddings", "layers_per_shard"):
        print(f"  {key:18s} {getattr(cfg, key)}")
    print(f"  parameters         {total:,} ({total / 1e6:.1f}M; embedding {embed / 1e6:.1f}M"
          f"{', tied' if cfg.tie_embeddings else ''})")
    print(f"  fp32 weights       {total * 4 / 2**20:.1f} MiB; with AdamW state and grads {total * 16 / 2**20:.1f} MiB")
    print("  stream shards:")
    for name, n in shards:
        print(f"    {name:28s} {n:>14,} params {n * 4 / 2**20:9.2f} MiB")
    print("  tensors:")
    for name, shape in shapes.items():
        if ".layers." in name and ".layers.0." not in name:
            continue
        print(f"    {name:52s} {tuple(shape)}")
    if cfg.n_layers > 1:
        print(f"    (layers 1..{cfg.n_layers - 1} repeat layer 0's shapes)")
    return 0
