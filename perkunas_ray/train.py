"""`python -m perkunas_ray.train`: init shards, train on Ray (Ray Train workers + actors), validate; with no
arguments, the main job.

With no arguments it prepares the corpus bundled in the package (once, under ./runs/data), initialises
the `tiny` profile in a new run dir under ./runs/ and trains it, then says where the run, its telemetry
and its report are. It joins the Ray cluster named by RAY_ADDRESS (as under `ray job submit`), else
starts a local Ray instance.
"""

from __future__ import annotations

from perkunas_ray.interpreter import ensure_project_interpreter

ensure_project_interpreter("perkunas_ray.train")  # before the imports below need torch and ray

import argparse
import copy
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from perkunas_ray.config import RunConfig
from perkunas_ray.errors import ConfigError, PerkunasError
from perkunas_ray.local_ray import start_local_ray
from perkunas_ray.run_flags import add_config_flags, apply_flags, config_from_args, flag_overrides
from perkunas_ray.run_setup import DEFAULT_RUNS, bundled_data_dir
from perkunas_ray.stream.build import TrainRun, local_backend, open_run, train, validate
from perkunas_ray.stream.interface import ActorFailure
from perkunas_ray.stream.session import has_checkpoints, recorded_config
from perkunas_ray.telemetry.report import build_report


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    modes = parser.add_argument_group("modes (none given: init if needed, then train)")
    modes.add_argument("--init-shards", action="store_true", help="create the run dir: config, tokenizer, step-0 shards")
    modes.add_argument("--train", action="store_true", help="train from the newest complete durable checkpoint")
    modes.add_argument("--validate", action="store_true", help="print validation loss/perplexity of the newest checkpoint")
    ray_group = parser.add_argument_group("runtime")
    ray_group.add_argument("--in-process", action="store_true",
                           help="run store, compute and flusher in this process (no Ray); same results")
    ray_group.add_argument("--ray-num-cpus", type=int, default=0, help="CPUs of a locally started Ray (0: all)")
    ray_group.add_argument("--quiet", action="store_true", help="print only the summary")
    add_config_flags(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m perkunas_ray.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_flags(parser)
    return parser


# ---- configuration --------------------------------------------------------------------------------------
def resolve_config(args: argparse.Namespace) -> tuple[RunConfig, RunConfig | None]:
    """(config, the config the run dir records). No recorded config: the run dir must be initialised.

    Train/validate of a given run dir start from its config.json; flags override it (not its model).
    """
    given_run_dir = flag_overrides(args).get("checkpoint.run_dir")
    init = args.init_shards or not (args.train or args.validate)
    needs_existing = (args.train or args.validate) and not args.init_shards
    if needs_existing and not given_run_dir and not args.config:
        raise ConfigError("--train/--validate need --run-dir (a run dir made by --init-shards)")
    auto_resume = not args.init_shards and has_checkpoints(given_run_dir) if given_run_dir else False
    recorded: RunConfig | None = None
    if given_run_dir and not args.config and (needs_existing or auto_resume):
        recorded = recorded_config(given_run_dir)
        cfg = apply_flags(copy.deepcopy(recorded), args)
    else:
        cfg = config_from_args(args, default_profile="tiny")
        if not cfg.checkpoint.run_dir:
            cfg.checkpoint.run_dir = str(DEFAULT_RUNS / f"tiny-{time.strftime('%Y%m%d-%H%M%S')}")
        resumes = init and has_checkpoints(cfg.checkpoint.run_dir) and not args.init_shards
        if needs_existing or resumes:
            recorded = recorded_config(cfg.checkpoint.run_dir)
    if not cfg.train.data_dir:
        cfg.train.data_dir = str(bundled_data_dir(cfg))
    return cfg, recorded


# ---- modes -----------------------------------------------------------------------------------------------
def print_validation(run: TrainRun) -> None:
    """Streamed validation of the run's checkpoint, in this process."""
    val_loss, num_batches = validate(run)
    print(f"step {run.state['step']} ({run.checkpoint_dir}): val loss {val_loss:.4f} | "
          f"val ppl {math.exp(min(val_loss, 50)):.2f} | {num_batches} batches")


def connect_ray(args: argparse.Namespace, namespace: str) -> bool:
    """Join RAY_ADDRESS's cluster, or start a local Ray; True when this call started or joined it."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=namespace)
    else:
        start_local_ray(namespace, args.ray_num_cpus or None)
    return True


def train_run(run: TrainRun, args: argparse.Namespace, started: float) -> None:
    """Train the opened run on Ray (ray.num_workers data-parallel workers) or in this process, and say where
    its results are."""
    verbose = not args.quiet
    if run.state["step"] and verbose:
        print(f"resuming from {run.checkpoint_dir} (step {run.state['step']}, {run.state['tokens_seen']:,} tokens)",
              flush=True)
    if run.cfg.stream.delayed_update and not args.in_process:
        raise ConfigError("stream.delayed_update (--delayed-update) runs in process only: add --in-process")
    if args.in_process:
        result = train(run, local_backend, verbose)
    else:  # Ray loads only when the run trains on it (`perkunas --help` and --in-process stay quick)
        import ray

        from actors.driver import train_on_ray

        ray_started = connect_ray(args, run.cfg.ray.namespace)
        try:
            result = train_on_ray(run, verbose)
        finally:
            if ray_started:
                ray.shutdown()
    paths = run.paths
    report = _build_report(paths.log_dir)
    wall = time.perf_counter() - started
    final_val = result.val_losses[-1][1] if result.val_losses else float("nan")
    print(f"\ndone: step {result.step}, {result.tokens_seen:,} tokens in {wall:.0f} s; final val loss {final_val:.4f}")
    print(f"run dir:   {paths.durable} (checkpoints/, config.json, tokenizer.json; active copy {paths.active})")
    print(f"telemetry: {paths.log_dir / 'train_log.jsonl'} and {paths.log_dir / 'trainer_state.json'}")
    print(f"report:    {report}")


def _build_report(log_dir: Path) -> str:
    out = log_dir / "report.html"
    try:
        build_report(log_dir, out)
    except Exception as exc:  # the report is a by-product: never fail a finished run over it
        return f"not built ({type(exc).__name__}: {exc})"
    return str(out)


def run(args: argparse.Namespace) -> int:
    """The modes `args` asks for; an actor death is reported (exit 1), config and data errors raise."""
    try:
        return run_modes(args)
    except ActorFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run_modes(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    cfg, recorded = resolve_config(args)
    init = recorded is None
    validate_only = args.validate and not (args.train or args.init_shards)
    # The data is opened once, for training and validation; a run opened to write holds its run dir.
    with open_run(cfg, init, recorded, write=not validate_only) as opened:
        if validate_only:
            print_validation(opened)
            return 0
        if init:
            print(f"initialised {cfg.model.num_stream_shards} shards in {opened.paths.durable}", flush=True)
            if args.init_shards and not args.train:
                return 0
        train_run(opened, args, started)
    if args.validate:
        print_validation(opened.at_latest())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except PerkunasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
