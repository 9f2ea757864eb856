"""`perkunas bench {train,store,engine,kvserve,serve,soak,gpu}`: benchmarks that run contender and baseline in one process run."""

from __future__ import annotations

import argparse

from perkunas_ray.bench import engine, gpu, kvserve, serve, soak, store, train

BENCHMARKS = (train, store, engine, kvserve, serve, soak, gpu)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: contender vs baseline in one run, table + JSON line")
    bench_sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for module in BENCHMARKS:
        module.register(bench_sub)
    p.set_defaults(func=lambda args: p.print_help() or 2)
