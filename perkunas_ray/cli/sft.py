"""`perkunas sft`: fine-tune a pretrained run on chat data into a new run dir that records its parent.

The records (Alpaca instruction/input/output or OpenAI messages; .json, .jsonl or .parquet) are rendered
with the chat template and the parent's tokenizer into a data dir (default RUN/sft_data, with a held-out
val split); step 0 holds the parent's weights (fresh optimizer state). It trains on the streaming runtime
(Ray actors, or --in-process) or, with --reference, on the plain PyTorch trainer. A stopped run resumes
with `perkunas train --run-dir RUN --train`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.errors import ConfigError
from perkunas_ray.profiles import load_run_config_file
from perkunas_ray.run_flags import add_config_flags, apply_flags
from perkunas_ray.stream.session import recorded_config


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sft", help="fine-tune a run on chat data (prompt-masked), into a new run dir",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sft = p.add_argument_group("fine-tuning")
    sft.add_argument("--parent", required=True, help="the pretrained run dir to start from")
    sft.add_argument("--step", type=int, default=-1, help="the parent's checkpoint step (default: its newest)")
    sft.add_argument("--data", required=True, nargs="+", help="SFT records: .json, .jsonl or .parquet file(s)")
    sft.add_argument("--val-fraction", type=float, default=0.1, help="share of records held out (default 0.1)")
    sft.add_argument("--prepared-dir", default="", help="where the rendered data dir goes (default RUN/sft_data)")
    sft.add_argument("--reference", action="store_true", help="train with the plain PyTorch trainer")
    runtime = p.add_argument_group("runtime")
    runtime.add_argument("--in-process", action="store_true", help="no Ray: store and compute in this process")
    runtime.add_argument("--ray-num-cpus", type=int, default=0, help="CPUs of a locally started Ray (0: all)")
    runtime.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with a local Ray")
    runtime.add_argument("--quiet", action="store_true", help="print only the summary")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perkunas_ray.sft import prepare_sft

    started = time.perf_counter()
    parent = DurableDir(args.parent).local_path
    if parent is None:
        raise ConfigError(f"--parent must be a local run dir, got {args.parent!r}")
    cfg = load_run_config_file(args.config or "sft")
    cfg.model = recorded_config(str(parent)).model  # the parent's model; a model flag is refused at init
    cfg = apply_flags(cfg, args)
    run_dir = cfg.checkpoint.run_dir
    if not run_dir:
        raise ConfigError("--run-dir must be given: the new run dir of the fine-tuned model")
    if DurableDir(run_dir).local_path is None and not args.prepared_dir:
        raise ConfigError(f"--run-dir {run_dir} is a URI: give --prepared-dir for the rendered data")
    cfg.checkpoint.parent_run_dir, cfg.checkpoint.parent_step = str(parent.resolve()), args.step
    prepared = Path(args.prepared_dir or Path(run_dir) / "sft_data")
    seq_len = cfg.train.seq_len or cfg.model.max_seq_len
    summary = prepare_sft(args.data, parent / "tokenizer.json", prepared, seq_len, args.val_fraction, cfg.train.seed)
    print(f"rendered {summary.num_samples} samples ({summary.num_trained_tokens} assistant tokens) into {prepared}; "
          f"{summary.num_too_long} longer than seq_len {seq_len} skipped", flush=True)
    cfg.train.data_dir, cfg.train.seq_len = str(prepared), seq_len
    if args.reference:
        from perkunas_ray.reference import ReferenceTrainer

        result = ReferenceTrainer(cfg, Path(run_dir), verbose=not args.quiet).train()
        print(f"run dir: {result.run_dir} (step {result.step}, parent {parent} step {cfg.checkpoint.parent_step})")
        return 0
    from perkunas_ray.stream.build import open_run
    from perkunas_ray.train import train_run

    with open_run(cfg, init=True) as opened:
        print(f"initialised {run_dir} from {parent} step {cfg.checkpoint.parent_step}", flush=True)
        train_run(opened, args, started)
    return 0
