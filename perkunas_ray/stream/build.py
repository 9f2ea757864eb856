"""One builder for every streamed run: open it (data checks, dirs, init, resume state), then train it on a backend.

The main job, `perkunas train` / `validate`, `perkunas bench train` and the tests all build their run
here. The backend comes from a factory the caller passes in: `local_backend` (in this process) below,
or the Ray actors' one, which the entry points take from actors/ (the core never imports the shells).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.flush import CheckpointFlusher
from perkunas_ray.config import RunConfig
from perkunas_ray.data import PackedTokenDataset
from perkunas_ray.device import resolve_device
from perkunas_ray.errors import ConfigError
from perkunas_ray.run_setup import check_run_dir_matches, open_datasets, seed_run_dir
from perkunas_ray.stream.interface import TrainResult
from perkunas_ray.stream.local import LocalBackend
from perkunas_ray.stream.loop import Backend, TrainLoop, mean_eval_loss
from perkunas_ray.stream.session import RunPaths, check_model_matches, init_run, latest_state, resolve_paths
from perkunas_ray.stream.store import ShardStore


@dataclasses.dataclass
class TrainRun:
    """An opened run: its config and dirs, its data, and the newest checkpoint it (re)starts from."""

    cfg: RunConfig
    paths: RunPaths
    train_data: PackedTokenDataset
    val_data: PackedTokenDataset | None
    checkpoint_dir: Path
    state: dict[str, Any]  # the checkpoint's state.json
    name: str  # names the run's Ray actors and tags its metrics

    def at_latest(self) -> TrainRun:
        """The same run at its newest complete checkpoint (say, after training it)."""
        ckpt, state = latest_state(self.paths)
        return dataclasses.replace(self, checkpoint_dir=ckpt, state=state)

    def loop(self, backend: Backend, verbose: bool = True) -> TrainLoop:
        return TrainLoop(self.cfg, backend, self.train_data, self.val_data, self.paths.log_dir, self.state,
                         verbose=verbose)


BackendFactory = Callable[[TrainRun], Backend]


def open_run(cfg: RunConfig, init: bool, recorded: RunConfig | None = None, name: str = "") -> TrainRun:
    """Check the data against the config before anything is written, resolve the dirs, initialise the run
    if `init`, and read its newest checkpoint. `recorded`: the config the run dir holds, whose model `cfg`
    must keep. `name`: the run's name on Ray (default: the run dir's name)."""
    train_data, val_data = open_datasets(cfg)
    local = DurableDir(cfg.checkpoint.run_dir).local_path
    if local is not None:
        check_run_dir_matches(local, train_data)
    if recorded is not None:
        check_model_matches(cfg, recorded, cfg.checkpoint.run_dir)
    paths = resolve_paths(cfg)
    if init:
        init_run(cfg, paths, train_data)
    ckpt, state = latest_state(paths)
    return TrainRun(cfg, paths, train_data, val_data, ckpt, state,
                    name or Path(paths.durable.rstrip("/")).name or "run")


def local_backend(run: TrainRun) -> LocalBackend:
    """The in-process backend: store, compute and flusher as plain objects in this process (no Ray)."""
    cfg, paths = run.cfg, run.paths
    flusher = CheckpointFlusher(paths.durable, paths.active, cfg.checkpoint.keep_last_checkpoints,
                                paths.mirrored_files)
    return LocalBackend(cfg, ShardStore.from_checkpoint(cfg, run.checkpoint_dir), resolve_device(cfg.train.device),
                        paths.active, flusher)


def train(run: TrainRun, make_backend: BackendFactory, verbose: bool = True,
          max_steps: int | None = None) -> TrainResult:
    """Record this invocation's effective config in the run dir, then train on the backend `make_backend` builds."""
    local = DurableDir(run.paths.durable).local_path
    if local is not None:
        seed_run_dir(local, run.cfg, run.train_data)
    backend = make_backend(run)
    try:
        return run.loop(backend, verbose).run(max_steps)
    finally:
        backend.close()


def validate(run: TrainRun) -> tuple[float, int]:
    """(mean validation loss, number of batches) of the run's checkpoint, streamed in this process."""
    cfg = run.cfg
    if run.val_data is None:
        raise ConfigError(f"{cfg.train.val_data_dir or cfg.train.data_dir} has no validation split")
    backend = LocalBackend(cfg, ShardStore.from_checkpoint(cfg, run.checkpoint_dir), resolve_device(cfg.train.device),
                           run.paths.active)
    try:
        return mean_eval_loss(backend.eval_losses, run.val_data, cfg, cfg.train.max_validation_batches or None)
    finally:
        backend.close()
