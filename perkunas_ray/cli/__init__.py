"""The `perkunas` command: one sub-module per subcommand, each exposing `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from perkunas_ray.errors import PerkunasError

# Sub-modules of perkunas_ray.cli, in help order. Each defines register(subparsers) and sets func.
SUBCOMMAND_MODULES = (
    "prepare", "model_info", "plan", "train_reference", "train", "sft", "validate", "export", "generate", "chat",
    "eval", "serve", "bench", "report", "dashboards",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perkunas", description="Memory-bounded LM training and KV-aware serving on Ray")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"perkunas_ray.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"perkunas_ray.cli.{name}":
                continue  # that subcommand is not part of this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PerkunasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
