"""Where a streamed run lives (durable + active dirs) and how it starts: init shards, or resume the newest checkpoint."""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from pathlib import Path
from typing import Any

import torch

from perkunas_ray.checkpoint.durable import DurableDir, is_uri
from perkunas_ray.checkpoint.format import (
    CHECKPOINTS,
    checkpoint_dir_name,
    encode_rng,
    latest_checkpoint,
    list_checkpoints,
    load_run_config,
    load_shard,
    publish_manifest,
    read_state,
    save_tensors,
    verify_checkpoint,
    write_json_atomic,
)
from perkunas_ray.checkpoint.resume import fetch_latest
from perkunas_ray.config import RunConfig, to_dict
from perkunas_ray.data import BatchCursor, PackedTokenDataset
from perkunas_ray.errors import CheckpointError, ConfigError
from perkunas_ray.model.shards import stream_shard_specs
from perkunas_ray.run_setup import check_run_dir_matches, seed_run_dir
from perkunas_ray.stream.store import init_shard

RUN_FILES = ("config.json", "tokenizer.json", "train_log.jsonl", "trainer_state.json")


@dataclasses.dataclass
class RunPaths:
    """durable: the archive (path or URI); active: fast local working state; log_dir: where the JSONL goes."""

    durable: str
    active: Path
    log_dir: Path

    @property
    def mirrored_files(self) -> tuple[str, ...]:
        """Files written in the active dir that each flush copies to the durable dir (remote durable only)."""
        return () if self.log_dir != self.active else RUN_FILES


def resolve_paths(cfg: RunConfig) -> RunPaths:
    """active_run_dir empty: <run_dir>/active for a local run dir, a local temp dir for a URI run dir."""
    run_dir = cfg.checkpoint.run_dir
    if not run_dir:
        raise ConfigError("checkpoint.run_dir must be given (--run-dir DIR or a filesystem URI)")
    if is_uri(run_dir) and not run_dir.startswith("file://"):
        digest = hashlib.sha256(run_dir.encode()).hexdigest()[:12]
        active = Path(cfg.checkpoint.active_run_dir or Path(tempfile.gettempdir()) / "perkunas-active" / digest)
        log_dir = active
    else:
        local = Path(run_dir.removeprefix("file://")).resolve()
        active = Path(cfg.checkpoint.active_run_dir).resolve() if cfg.checkpoint.active_run_dir else local / "active"
        log_dir = local
    active.mkdir(parents=True, exist_ok=True)
    return RunPaths(run_dir, active, log_dir)


def fetch_run_files(paths: RunPaths) -> list[str]:
    """A remote durable dir's run files that this node lacks, fetched into its log dir (a rank 0 that a restart put
    on another node continues the run's log, and counts its attempts, from the last flush); returns their names."""
    durable = DurableDir(paths.durable) if paths.mirrored_files else None
    fetched = []
    for name in paths.mirrored_files:
        if not (paths.log_dir / name).is_file() and durable is not None and durable.is_file(name):
            durable.download_file(name, paths.log_dir / name)
            fetched.append(name)
    return fetched


def initial_state(cfg: RunConfig, train: PackedTokenDataset) -> dict[str, Any]:
    """state.json of step 0: the cursor at its start and the RNG as torch.manual_seed(seed) leaves it."""
    cursor = BatchCursor(train, cfg.train.micro_batch_size, cfg.train.shuffle_train, cfg.train.seed)
    rng = torch.Generator().manual_seed(cfg.train.seed).get_state()
    return {"step": 0, "tokens_seen": 0, "cursor": cursor.state_dict(), "rng": encode_rng(rng),
            "trainer": "stream", "loss_scale": None}


def parent_checkpoint(cfg: RunConfig, train: PackedTokenDataset) -> Path:
    """The checkpoint of checkpoint.parent_run_dir a fine-tuning run starts from; a parent_step of -1 is
    resolved here to the parent's newest complete step, so the run's config records the step it started from.
    The parent must hold the same model and have read data tokenized alike."""
    c = cfg.checkpoint
    parent = DurableDir(c.parent_run_dir).local_path
    if parent is None:
        raise ConfigError(f"checkpoint.parent_run_dir must be a local run dir, got {c.parent_run_dir!r}")
    check_model_matches(cfg, load_run_config(parent), str(parent))
    check_run_dir_matches(parent, train)
    if c.parent_step < 0:
        ckpt = latest_checkpoint(parent)
        c.parent_step = int(read_state(ckpt)["step"])
        return ckpt
    steps = [step for step, _ in list_checkpoints(parent)]
    if c.parent_step not in steps:
        raise ConfigError(f"checkpoint.parent_step {c.parent_step}: run dir {parent} has no complete checkpoint "
                          f"at that step (it has {steps or 'none'})")
    ckpt = parent / CHECKPOINTS / checkpoint_dir_name(c.parent_step)
    verify_checkpoint(ckpt)
    return ckpt


def init_run(cfg: RunConfig, paths: RunPaths, train: PackedTokenDataset) -> Path:
    """--init-shards: config.json, tokenizer.json and checkpoint step 0, each shard initialised on its own,
    or copied from the parent run's checkpoint (fine-tuning; the optimizer state starts fresh)."""
    durable = DurableDir(paths.durable)
    if durable.list_checkpoints():
        raise ConfigError(f"run dir {paths.durable} already holds checkpoints; refusing to overwrite it "
                          f"(train it with --train, or pick a new --run-dir)")
    parent = parent_checkpoint(cfg, train) if cfg.checkpoint.parent_run_dir else None
    seed_dir = paths.log_dir
    seed_run_dir(seed_dir, cfg, train)
    ckpt = paths.active / CHECKPOINTS / checkpoint_dir_name(0)
    for spec in stream_shard_specs(cfg.model):
        weights = load_shard(parent, spec.name) if parent else init_shard(cfg, spec.name, cfg.train.seed)
        save_tensors(ckpt / "shards" / f"{spec.name}.safetensors", weights)
        save_tensors(ckpt / "optim" / f"{spec.name}.safetensors", {})
    write_json_atomic(ckpt / "state.json", initial_state(cfg, train))
    publish_manifest(ckpt, step=0)
    durable.upload_checkpoint(ckpt, 0)
    if seed_dir == paths.active:  # remote durable dir: publish the run files too
        for name in ("config.json", "tokenizer.json"):
            if (seed_dir / name).is_file():
                durable.upload_file(seed_dir / name, name)
    return ckpt


def recorded_config(run_dir: str) -> RunConfig:
    """The config run dir `run_dir` (a path or URI) records in its config.json."""
    durable = DurableDir(run_dir)
    if not durable.exists():
        raise CheckpointError(f"run dir {run_dir} does not exist; create it first with --init-shards")
    if not durable.is_file("config.json"):
        raise CheckpointError(f"run dir {run_dir} has no config.json; is it a training run directory? "
                              f"(create one with --init-shards)")
    if durable.local_path is not None:
        return load_run_config(durable.local_path)
    with tempfile.TemporaryDirectory() as tmp:
        durable.download_file("config.json", Path(tmp) / "config.json")
        return load_run_config(Path(tmp))


def has_checkpoints(run_dir: str) -> bool:
    durable = DurableDir(run_dir)
    return durable.exists() and bool(durable.list_checkpoints())


def latest_state(paths: RunPaths) -> tuple[Path, dict[str, Any]]:
    """(local checkpoint dir, state.json) of the newest complete durable checkpoint; CheckpointError if none."""
    durable = DurableDir(paths.durable)
    if not durable.exists():
        raise CheckpointError(f"run dir {paths.durable} does not exist; create it with --init-shards")
    found = fetch_latest(durable, paths.active)
    if found is None:
        raise CheckpointError(f"run dir {paths.durable} has no complete checkpoint under {CHECKPOINTS}/; "
                              f"create one with --init-shards")
    _, ckpt = found
    return ckpt, read_state(ckpt)


def check_model_matches(cfg: RunConfig, recorded: RunConfig, run_dir: str) -> None:
    """Flags may change how a run trains, not the model it trains."""
    if to_dict(cfg.model) != to_dict(recorded.model):
        diff = [k for k, v in to_dict(cfg.model).items() if to_dict(recorded.model).get(k) != v]
        raise ConfigError(f"model config differs from the one run dir {run_dir} was initialised with "
                          f"(field(s) {', '.join(diff)}); start a new run dir to change the model")
