"""One builder for every streamed run: open it (data checks, dirs, init, resume state), then train it on a backend.

The main job, `perkunas train` / `validate`, `perkunas bench train` and the tests all build their run
here. The backend comes from a factory the caller passes in: `local_backend` (in this process) below,
or the Ray actors' one, which the entry points take from actors/ (the core never imports the shells).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from perkunas_ray.checkpoint.cleanup import clean_stale_writes
from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.flush import CheckpointFlusher
from perkunas_ray.checkpoint.lock import RunDirLock
from perkunas_ray.checkpoint.prune import retention_warnings
from perkunas_ray.config import RunConfig
from perkunas_ray.data import PackedTokenDataset
from perkunas_ray.device import resolve_device
from perkunas_ray.errors import ConfigError
from perkunas_ray.run_setup import check_run_dir_matches, open_datasets, seed_run_dir
from perkunas_ray.stream.interface import TrainResult
from perkunas_ray.stream.local import LocalBackend
from perkunas_ray.stream.loop import Backend, TrainLoop, mean_eval_loss
from perkunas_ray.stream.residency import choose_resident, device_store
from perkunas_ray.stream.session import RunPaths, check_model_matches, init_run, latest_state, resolve_paths
from perkunas_ray.stream.store import ShardStore


@dataclasses.dataclass
class TrainRun:
    """An opened run: its config and dirs, its data, and the newest checkpoint it (re)starts from."""

    cfg: RunConfig
    paths: RunPaths
    train_data: PackedTokenDataset
    val_data: PackedTokenDataset | None
    checkpoint_dir: Path  # the newest checkpoint that verified when the run was opened
    state: dict[str, Any]  # the checkpoint's state.json
    name: str  # names the run's Ray actors and tags its metrics
    lock: RunDirLock | None = None  # held by a run opened to write: one trainer per run dir

    def close(self) -> None:
        """Release the run dir (the OS drops the lock anyway when this process dies)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> TrainRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def at_latest(self) -> TrainRun:
        """The same run at its newest complete checkpoint (say, after training it)."""
        ckpt, state = latest_state(self.paths)
        return dataclasses.replace(self, checkpoint_dir=ckpt, state=state)

    def loop(self, backend: Backend, verbose: bool = True) -> TrainLoop:
        return train_loop(self.cfg, backend, self.train_data, self.val_data, self.paths.log_dir, self.state, verbose)


BackendFactory = Callable[[TrainRun], Backend]


def train_loop(cfg: RunConfig, backend: Backend, train_data: PackedTokenDataset,
               val_data: PackedTokenDataset | None, log_dir: Path, state: dict[str, Any], verbose: bool = True,
               num_workers: int = 1) -> TrainLoop:
    """The one place a TrainLoop is made. With `num_workers` data-parallel workers the loop draws every
    worker's micro-batches (the global batch: num_workers x accumulation); the backend computes its slice."""
    if num_workers > 1:
        cfg = copy.deepcopy(cfg)
        cfg.train.gradient_accumulation_steps *= num_workers
    return TrainLoop(cfg, backend, train_data, val_data, log_dir, state, verbose=verbose)


def run_name(durable: str) -> str:
    """The run's name on Ray: the run dir's name plus a digest of its full path, so `a/r1` and `b/r1` can
    train on one cluster side by side."""
    digest = hashlib.sha256(durable.encode()).hexdigest()[:8]
    return f"{Path(durable.rstrip('/')).name or 'run'}-{digest}"


def clean_crashed_writes(paths: RunPaths) -> None:
    """Remove the half-written files a crashed writer left in the durable and the active dir."""
    clean_stale_writes(DurableDir(paths.durable))
    clean_stale_writes(DurableDir(str(paths.active)))


def open_run(cfg: RunConfig, init: bool, recorded: RunConfig | None = None, name: str = "",
             write: bool = True) -> TrainRun:
    """Check the data against the config before anything is written, take the run dir (`write`: a second
    trainer gets RunDirLockedError naming this one), clean what a crashed writer left, initialise the run
    if `init`, and read its newest checkpoint. `recorded`: the config the run dir holds, whose model `cfg`
    must keep. `name`: the run's name on Ray (default: `run_name`). Use it as a context manager, or
    call `close()`, to release the run dir."""
    train_data, val_data = open_datasets(cfg)
    local = DurableDir(cfg.checkpoint.run_dir).local_path
    if local is not None:
        check_run_dir_matches(local, train_data)
    if recorded is not None:
        check_model_matches(cfg, recorded, cfg.checkpoint.run_dir)
    paths = resolve_paths(cfg)
    lock = RunDirLock(paths.durable) if write else None
    if lock is not None:
        lock.acquire()
    try:
        if write:
            for message in retention_warnings(cfg.checkpoint.keep_last_checkpoints,
                                              cfg.checkpoint.durable_flush_every, cfg.train.save_every):
                warnings.warn(message, stacklevel=2)
            clean_crashed_writes(paths)
        if init:
            init_run(cfg, paths, train_data)
        ckpt, state = latest_state(paths)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return TrainRun(cfg, paths, train_data, val_data, ckpt, state, name or run_name(paths.durable), lock)


def local_backend(run: TrainRun) -> LocalBackend:
    """The in-process backend: store, compute and flusher as plain objects in this process (no Ray); on the
    resident path when stream.resident decides so (stream/residency.py)."""
    cfg, paths = run.cfg, run.paths
    flusher = CheckpointFlusher(paths.durable, paths.active, cfg.checkpoint.keep_last_checkpoints,
                                paths.mirrored_files)
    device = resolve_device(cfg.train.device)
    shaped = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seq_len=run.train_data.seq_len))
    if choose_resident(shaped, device):
        store = device_store(cfg, run.checkpoint_dir, device)
        return LocalBackend(cfg, store, device, paths.active, flusher, resident=True)
    store = ShardStore.from_checkpoint(cfg, run.checkpoint_dir, verify=False)  # open_run verified it
    return LocalBackend(cfg, store, device, paths.active, flusher)


def record_invocation(run: TrainRun) -> None:
    """Record this invocation's effective config in a local run dir."""
    local = DurableDir(run.paths.durable).local_path
    if local is not None:
        seed_run_dir(local, run.cfg, run.train_data)


@contextlib.contextmanager
def training(run: TrainRun) -> Iterator[None]:
    """Around any backend's training of `run`: record this invocation's effective config in the run dir first,
    release the run dir when training ends (however it ends)."""
    try:
        record_invocation(run)
        yield
    finally:
        run.close()


def train(run: TrainRun, make_backend: BackendFactory, verbose: bool = True,
          max_steps: int | None = None) -> TrainResult:
    """Train in this process on the backend `make_backend` builds (Ray's driver: actors.driver.train_on_ray)."""
    with training(run):
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
    store = ShardStore.from_checkpoint(cfg, run.checkpoint_dir, verify=False)  # open_run verified it
    backend = LocalBackend(cfg, store, resolve_device(cfg.train.device), run.paths.active)
    try:
        return mean_eval_loss(backend.eval_losses, run.val_data, cfg, cfg.train.max_validation_batches or None)
    finally:
        backend.close()
