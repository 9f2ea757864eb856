"""`python -m perkunas_ray.train`: init shards, train on Ray actors, validate; with no arguments, the main job.

With no arguments it prepares the corpus bundled in the package (once, under ./runs/data), initialises
the `tiny` profile in a new run dir under ./runs/ and trains it, then says where the run, its telemetry
and its report are. It joins the Ray cluster named by RAY_ADDRESS (as under `ray job submit`), else
starts a local Ray instance.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.cli.run_flags import (
    ALIASED_FIELDS,
    ALIASES,
    add_config_flags,
    config_from_args,
    flag_overrides,
)
from perkunas_ray.config import RunConfig
from perkunas_ray.errors import CheckpointError, ConfigError, PerkunasError

DEFAULT_RUNS = Path("runs")


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    modes = parser.add_argument_group("modes (none given: init if needed, then train)")
    modes.add_argument("--init-shards", action="store_true", help="create the run dir: config, tokenizer, step-0 shards")
    modes.add_argument("--train", action="store_true", help="train from the newest complete durable checkpoint")
    modes.add_argument("--validate", action="store_true", help="print validation loss/perplexity of the newest checkpoint")
    ray_group = parser.add_argument_group("runtime")
    ray_group.add_argument("--in-process", action="store_true",
                           help="run store, compute and flusher in this process (no Ray); same results")
    ray_group.add_argument("--compute-threads", type=int, default=0, help="torch threads of the compute actor (0: all)")
    ray_group.add_argument("--ray-num-cpus", type=int, default=0, help="CPUs of a locally started Ray (0: all)")
    ray_group.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with a local Ray")
    ray_group.add_argument("--quiet", action="store_true", help="print only the summary")
    add_config_flags(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m perkunas_ray.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_flags(parser)
    return parser


# ---- configuration --------------------------------------------------------------------------------------
def _apply_overrides(cfg: RunConfig, args: argparse.Namespace) -> RunConfig:
    if args.model_preset:
        from perkunas_ray.model.presets import load_preset

        cfg.model = load_preset(args.model_preset)
    for key, value in flag_overrides(args).items():
        section, name = key.split(".")
        if (section, name) in ALIASED_FIELDS:
            value = ALIASES.get(value, value)
        setattr(getattr(cfg, section), name, value)
    return cfg.validate()


def _existing_run_config(run_dir: str) -> RunConfig:
    from perkunas_ray.checkpoint.format import load_run_config

    durable = DurableDir(run_dir)
    if not durable.exists():
        raise CheckpointError(f"run dir {run_dir} does not exist; create it first with --init-shards")
    if not durable.is_file("config.json"):
        raise CheckpointError(f"run dir {run_dir} has no config.json; is it a training run directory? "
                              f"(create one with --init-shards)")
    if durable.local_path is not None:
        return load_run_config(durable.local_path)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        durable.download_file("config.json", Path(tmp) / "config.json")
        return load_run_config(Path(tmp))


def bundled_data_dir(cfg: RunConfig, root: Path = DEFAULT_RUNS) -> Path:
    """The bundled corpus prepared for this model's context (reused once prepared)."""
    from perkunas_ray.data import prepare_corpus

    out = root / "data" / f"bundled-seq{cfg.model.max_seq_len}"
    if not (out / "manifest.json").is_file():
        print(f"preparing the bundled corpus in {out} ...", flush=True)
        prepare_corpus(out, seq_len=cfg.model.max_seq_len, show_progress=False, overwrite=True)
    return out


def resolve_config(args: argparse.Namespace) -> tuple[RunConfig, bool]:
    """(config, whether the run dir must be initialised). Train/validate start from the run dir's config."""
    given_run_dir = flag_overrides(args).get("checkpoint.run_dir")
    init = args.init_shards or not (args.train or args.validate)
    needs_existing = (args.train or args.validate) and not args.init_shards
    if needs_existing and not given_run_dir and not args.config:
        raise ConfigError("--train/--validate need --run-dir (a run dir made by --init-shards)")
    auto_resume = not args.init_shards and _has_checkpoints(given_run_dir) if given_run_dir else False
    if given_run_dir and not args.config and (needs_existing or auto_resume):
        cfg = _apply_overrides(_existing_run_config(given_run_dir), args)
        init = False
    else:
        cfg = config_from_args(args, default_profile="tiny")
        if not cfg.checkpoint.run_dir:
            cfg.checkpoint.run_dir = str(DEFAULT_RUNS / f"tiny-{time.strftime('%Y%m%d-%H%M%S')}")
        if needs_existing:
            _existing_run_config(cfg.checkpoint.run_dir)
        elif init and _has_checkpoints(cfg.checkpoint.run_dir) and not args.init_shards:
            init = False
    if not cfg.train.data_dir:
        cfg.train.data_dir = str(bundled_data_dir(cfg))
    return cfg, init


def _has_checkpoints(run_dir: str) -> bool:
    durable = DurableDir(run_dir)
    return durable.exists() and bool(durable.list_checkpoints())


# ---- modes -----------------------------------------------------------------------------------------------
def validate_run(cfg: RunConfig) -> float:
    """Streamed validation of the newest checkpoint, in this process."""
    import numpy as np

    from perkunas_ray.data import iter_eval_batches
    from perkunas_ray.device import resolve_device
    from perkunas_ray.run_setup import open_datasets
    from perkunas_ray.stream.compute import StreamCompute
    from perkunas_ray.stream.session import latest_state, resolve_paths
    from perkunas_ray.stream.store import ShardStore

    _, val = open_datasets(cfg)
    if val is None:
        raise ConfigError(f"{cfg.train.val_data_dir or cfg.train.data_dir} has no validation split")
    paths = resolve_paths(cfg)
    ckpt, state = latest_state(paths)
    store = ShardStore.from_checkpoint(cfg, ckpt)
    compute = StreamCompute(cfg, resolve_device(cfg.train.device))
    batches = list(iter_eval_batches(val, cfg.train.micro_batch_size, cfg.train.max_validation_batches or None))
    group = max(1, cfg.train.gradient_accumulation_steps)
    losses: list[float] = []
    for i in range(0, len(batches), group):
        losses += compute.eval_losses(np.stack(batches[i:i + group]), store.shard_tensors)
    store.close()
    val_loss = float(np.mean(losses))
    print(f"step {state['step']} ({ckpt}): val loss {val_loss:.4f} | val ppl {math.exp(min(val_loss, 50)):.2f} | "
          f"{len(batches)} batches")
    return val_loss


def connect_ray(args: argparse.Namespace) -> bool:
    """Join RAY_ADDRESS's cluster, or start a local Ray; True when this call started or joined it."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace="perkunas")
    else:
        # address="local": never join a cluster someone else's `ray start` left in /tmp/ray by accident
        ray.init(address="local", num_cpus=args.ray_num_cpus or None, include_dashboard=args.dashboard,
                 namespace="perkunas")
    return True


def train_run(cfg: RunConfig, init: bool, args: argparse.Namespace) -> int:
    from perkunas_ray.run_setup import check_run_dir_matches, open_datasets, seed_run_dir
    from perkunas_ray.stream.session import init_run, latest_state, resolve_paths

    started = time.perf_counter()
    train, val = open_datasets(cfg)  # data vs config checks come before anything is written
    durable = DurableDir(cfg.checkpoint.run_dir)
    if durable.local_path is not None:
        check_run_dir_matches(durable.local_path, train)
    if not init:
        from perkunas_ray.stream.session import check_model_matches

        check_model_matches(cfg, _existing_run_config(cfg.checkpoint.run_dir), cfg.checkpoint.run_dir)
    paths = resolve_paths(cfg)
    if init:
        init_run(cfg, paths, train)
        print(f"initialised {cfg.model.num_stream_shards} shards in {paths.durable}", flush=True)
        if args.init_shards and not args.train:
            return 0
    ckpt, state = latest_state(paths)
    if durable.local_path is not None:
        seed_run_dir(durable.local_path, cfg, train)  # record the effective config of this invocation
    if state["step"] and not args.quiet:
        print(f"resuming from {ckpt} (step {state['step']}, {state['tokens_seen']:,} tokens)", flush=True)
    run_name = Path(paths.durable.rstrip("/")).name or "run"
    if args.in_process:
        result = _train_in_process(cfg, paths, train, val, ckpt, state, not args.quiet)
    else:
        import ray

        from actors.driver import run_training

        ray_started = connect_ray(args)
        try:
            result = run_training(cfg, paths, train, val, ckpt, state, run_name, verbose=not args.quiet,
                                  compute_threads=args.compute_threads)
        finally:
            if ray_started:
                ray.shutdown()
    report = _build_report(paths.log_dir)
    wall = time.perf_counter() - started
    final_val = result.val_losses[-1][1] if result.val_losses else float("nan")
    print(f"\ndone: step {result.step}, {result.tokens_seen:,} tokens in {wall:.0f} s; final val loss {final_val:.4f}")
    print(f"run dir:   {paths.durable} (checkpoints/, config.json, tokenizer.json; active copy {paths.active})")
    print(f"telemetry: {paths.log_dir / 'train_log.jsonl'} and {paths.log_dir / 'trainer_state.json'}")
    print(f"report:    {report}")
    return 0


def _train_in_process(cfg, paths, train, val, ckpt, state, verbose):  # type: ignore[no-untyped-def]
    from perkunas_ray.checkpoint.flush import CheckpointFlusher
    from perkunas_ray.device import resolve_device
    from perkunas_ray.stream.local import LocalBackend
    from perkunas_ray.stream.loop import TrainLoop
    from perkunas_ray.stream.store import ShardStore

    store = ShardStore.from_checkpoint(cfg, ckpt)
    flusher = CheckpointFlusher(paths.durable, paths.active, cfg.checkpoint.keep_last_checkpoints, paths.mirrored_files)
    backend = LocalBackend(cfg, store, resolve_device(cfg.train.device), paths.active, flusher)
    try:
        return TrainLoop(cfg, backend, train, val, paths.log_dir, state, verbose=verbose).run()
    finally:
        backend.close()


def _build_report(log_dir: Path) -> str:
    try:
        from perkunas_ray.telemetry.report import build_report
    except ImportError:
        return "not built (perkunas_ray.telemetry.report is not part of this build)"
    out = log_dir / "report.html"
    try:
        build_report(log_dir, out)
    except Exception as exc:  # the report is a by-product: never fail a finished run over it
        return f"not built ({type(exc).__name__}: {exc})"
    return str(out)


def run(args: argparse.Namespace) -> int:
    cfg, init = resolve_config(args)
    if args.validate and not (args.train or args.init_shards):
        validate_run(cfg)
        return 0
    code = train_run(cfg, init, args)
    if args.validate:
        validate_run(cfg)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except PerkunasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        if type(exc).__name__ != "ActorFailure":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
