"""`perkunas train`: the streaming runtime on Ray actors (same flags as `python -m perkunas_ray.train`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from perkunas_ray.train import add_train_flags

    p = subparsers.add_parser("train", help="train with the streaming runtime (init shards, train, validate)",
                              description=__doc__)
    add_train_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perkunas_ray.train import run as run_train

    try:
        return run_train(args)
    except RuntimeError as exc:
        if type(exc).__name__ != "ActorFailure":
            raise
        import sys

        print(f"error: {exc}", file=sys.stderr)
        return 1
