"""`perkunas train-reference`: the plain in-process PyTorch trainer (the streaming runtime's baseline)."""

from __future__ import annotations

import argparse
from pathlib import Path

from perkunas_ray.errors import ConfigError
from perkunas_ray.run_flags import add_config_flags, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train-reference", help="train with the plain in-process PyTorch loop",
                              description=__doc__)
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perkunas_ray.reference import ReferenceTrainer

    cfg = config_from_args(args)
    if not cfg.checkpoint.run_dir:
        raise ConfigError("--run-dir must be given")
    trainer = ReferenceTrainer(cfg, Path(cfg.checkpoint.run_dir))
    result = trainer.train()
    print(f"run dir: {result.run_dir} (step {result.step}, {result.tokens_seen:,} tokens)")
    return 0
