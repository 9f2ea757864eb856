"""`perkunas report RUN_DIR -o report.html`: one self-contained HTML file with the run's charts and summary."""

from __future__ import annotations

import argparse

from perkunas_ray.telemetry.report import write_report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="write a self-contained HTML report (charts, summary) of a training run",
        description="Reads RUN_DIR/train_log.jsonl (or a .jsonl path) as it is now, so it works on a run that is "
                    "still going. The file has no external resources: open it anywhere, offline.")
    p.add_argument("run", metavar="RUN_DIR", help="a run directory, or the path of a train_log.jsonl")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument("--title", default=None, help="page title (default: the run directory's name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = write_report(args.run, args.output, args.title)
    print(f"wrote {out}")
    return 0
