"""`perkunas bench {train,engine,kvserve,serve,soak}`: benchmarks that run contender and baseline in one process run."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = ("train", "engine", "kvserve", "serve", "soak")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: contender vs baseline in one run, table + JSON line")
    bench_sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(f"perkunas_ray.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"perkunas_ray.bench.{name}":
                continue
            raise
        module.register(bench_sub)
    p.set_defaults(func=lambda args: p.print_help() or 2)
