"""`perkunas train`: the streaming runtime on Ray actors (same flags as `python -m perkunas_ray.train`)."""

from __future__ import annotations

import argparse

from perkunas_ray.train import add_train_flags, run


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train with the streaming runtime (init shards, train, validate)",
                              description=__doc__)
    add_train_flags(p)
    p.set_defaults(func=run)
