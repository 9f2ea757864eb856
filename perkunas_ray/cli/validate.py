"""`perkunas validate`: validation loss and perplexity of a run dir's newest checkpoint (streamed, no Ray)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from perkunas_ray.cli.run_flags import add_config_flags

    p = subparsers.add_parser("validate", help="validation loss / perplexity of a run dir's newest checkpoint",
                              description=__doc__)
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perkunas_ray.train import resolve_config, validate_run

    args.init_shards, args.train, args.validate = False, False, True
    cfg, _ = resolve_config(args)
    validate_run(cfg)
    return 0
