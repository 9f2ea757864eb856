"""`perkunas validate`: validation loss and perplexity of a run dir's newest checkpoint (streamed, no Ray)."""

from __future__ import annotations

import argparse

from perkunas_ray.run_flags import add_config_flags
from perkunas_ray.train import run


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("validate", help="validation loss / perplexity of a run dir's newest checkpoint",
                              description=__doc__)
    add_config_flags(p)
    p.set_defaults(func=validate_newest)


def validate_newest(args: argparse.Namespace) -> int:
    args.init_shards, args.train, args.validate = False, False, True
    return run(args)
