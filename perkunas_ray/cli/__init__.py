"""The `perkunas` command: one sub-module per subcommand, each exposing `register(subparsers)`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from perkunas_ray.cli import (
    bench,
    chat,
    dashboards,
    eval,
    export,
    generate,
    model_info,
    plan,
    prepare,
    report,
    serve,
    sft,
    train,
    train_reference,
    validate,
)
from perkunas_ray.errors import PerkunasError

# The subcommands, in help order. Each module defines register(subparsers), which sets func.
SUBCOMMANDS = (prepare, model_info, plan, train_reference, train, sft, validate, export, generate, chat, eval, serve,
               bench, report, dashboards)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perkunas", description="Memory-bounded LM training and KV-aware serving on Ray")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
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
