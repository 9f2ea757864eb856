"""The checkpoint format: one directory per step, safetensors files, a manifest written last.

    RUN/config.json                     the RunConfig the run was started with
    RUN/tokenizer.json                  the tokenizer the data was prepared with
    RUN/checkpoints/step_00000100/
        shards/<shard name>.safetensors model parameters of one stream shard (HF Llama names)
        optim/<shard name>.safetensors  that shard's optimizer state ("<param>::<slot>")
        state.json                      step, tokens seen, data cursor, RNG, anything else to resume
        manifest.json                   format version + sha256/bytes of every file; written last

A checkpoint without a valid manifest is incomplete and invisible: readers skip it. A complete one whose
files fail their checksums is skipped, with a warning, by `newest_verified`, which every reader of "the
newest checkpoint" goes through.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from perkunas_ray.checkpoint.atomic import fsync_dir, replacing, write_json_atomic
from perkunas_ray.checkpoint.prune import steps_to_prune
from perkunas_ray.config import SECTIONS, ModelConfig, RunConfig
from perkunas_ray.errors import CheckpointError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = "state.json"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoint_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint failed verification and an older one is used instead."""


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Safetensors write through a temp file, fsync and rename (tensors made contiguous CPU copies first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise CheckpointError(f"checkpoint file {path} is corrupt: its sha256 differs from the manifest's")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
        raise CheckpointError(f"checkpoint file {path} is not a readable safetensors file: {exc}") from exc


def write_checkpoint(ckpt_dir: Path, shards: dict[str, dict[str, torch.Tensor]],
                     optim: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> Path:
    """Write a whole checkpoint; the manifest goes last so a crash mid-way leaves no visible checkpoint."""
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / MANIFEST).exists():
        (ckpt_dir / MANIFEST).unlink()  # rewriting a step: make it invisible first
    for name, tensors in shards.items():
        save_tensors(ckpt_dir / "shards" / f"{name}.safetensors", tensors)
    for name, tensors in optim.items():
        save_tensors(ckpt_dir / "optim" / f"{name}.safetensors", tensors)
    write_json_atomic(ckpt_dir / STATE, state)
    publish_manifest(ckpt_dir, step=int(state["step"]))
    return ckpt_dir


def publish_manifest(ckpt_dir: Path, step: int) -> dict[str, Any]:
    """Checksum every file of a checkpoint directory and write its manifest, making it visible.

    The files were fsynced when written; their directory entries are fsynced here, before the manifest
    that vouches for them, so a crash cannot leave a manifest naming files the disk never kept.
    """
    files = {}
    for path in sorted(ckpt_dir.rglob("*")):
        if path.is_dir():
            fsync_dir(path)
        elif path.is_file() and path.name != MANIFEST and not path.name.endswith(".tmp"):
            rel = path.relative_to(ckpt_dir).as_posix()
            files[rel] = {"sha256": sha256_file(path), "num_bytes": path.stat().st_size}
    manifest = {"format_version": FORMAT_VERSION, "step": step, "files": files}
    write_json_atomic(ckpt_dir / MANIFEST, manifest)
    return manifest


def parse_manifest(data: bytes, where: str | Path) -> dict[str, Any]:
    """A manifest's JSON, checked: an empty, truncated or foreign file is a CheckpointError naming it."""
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{where} is not a checkpoint manifest (no 'files' object)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{where} has format_version {manifest.get('format_version')!r}; "
                              f"this build reads version {FORMAT_VERSION}")
    return manifest


def is_complete_manifest(data: bytes) -> bool:
    try:
        parse_manifest(data, MANIFEST)
    except CheckpointError:
        return False
    return True


def read_manifest(ckpt_dir: Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_dir} is incomplete: it has no {MANIFEST}")
    return parse_manifest(path.read_bytes(), path)


def verify_checkpoint(ckpt_dir: Path) -> dict[str, Any]:
    """Check every file against the manifest; the error names the first bad file."""
    manifest = read_manifest(ckpt_dir)
    for rel, meta in manifest["files"].items():
        path = Path(ckpt_dir) / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} listed in the manifest is missing")
        if sha256_file(path) != meta["sha256"]:
            raise CheckpointError(f"checkpoint file {path} is corrupt: its sha256 differs from the manifest's")
    return manifest


def step_of(dir_name: str) -> int | None:
    m = _STEP_DIR.match(dir_name)
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete checkpoint (has a valid manifest), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        step = step_of(child.name)
        if step is not None and (child / MANIFEST).is_file() and is_complete_manifest((child / MANIFEST).read_bytes()):
            found.append((step, child))
    return sorted(found)


def newest_verified(steps: Sequence[int], open_checkpoint: Callable[[int], Path], where: str) -> tuple[int, Path] | None:
    """(step, dir) of the newest of `steps` whose files match its manifest; None when there are no steps.

    `open_checkpoint` makes a step readable as a local dir (a download for a remote durable dir). A newer
    checkpoint that fails is skipped with a CheckpointFallbackWarning naming it; when none verifies, the
    CheckpointError lists every failure.
    """
    failures = []
    newest_first = sorted(steps, reverse=True)
    for i, step in enumerate(newest_first):
        try:
            ckpt = open_checkpoint(step)
            verify_checkpoint(ckpt)
        except (CheckpointError, OSError) as exc:
            failures.append(f"step {step}: {exc}")
            if i + 1 < len(newest_first):
                warnings.warn(f"{where}: checkpoint step {step} is unusable ({exc}); falling back to step "
                              f"{newest_first[i + 1]}", CheckpointFallbackWarning, stacklevel=2)
            continue
        return step, ckpt
    if failures:
        raise CheckpointError(f"{where}: no checkpoint passes verification ({'; '.join(failures)})")
    return None


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint whose files verify (older ones are the fallback, with a warning)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run dir {run_dir} does not exist")
    found = newest_verified([step for step, _ in list_checkpoints(run_dir)],
                            lambda step: run_dir / CHECKPOINTS / checkpoint_dir_name(step), f"run dir {run_dir}")
    if found is None:
        raise CheckpointError(f"run dir {run_dir} has no complete checkpoint under {CHECKPOINTS}/")
    return found[1]


def prune_checkpoints(run_dir: Path, keep: int, last_flushed_step: int | None = None) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints, sparing any not yet flushed (see steps_to_prune)."""
    complete = dict(list_checkpoints(run_dir))
    removed = [complete[step] for step in steps_to_prune(complete, keep, last_flushed_step)]
    for path in removed:
        (path / MANIFEST).unlink(missing_ok=True)  # invisible first, then gone
        shutil.rmtree(path, ignore_errors=True)
    return removed


def shard_file(ckpt_dir: Path, shard_name: str, kind: str = "shards") -> Path:
    return Path(ckpt_dir) / kind / f"{shard_name}.safetensors"


def load_shard(ckpt_dir: Path, shard_name: str, kind: str = "shards", verify: bool = True) -> dict[str, torch.Tensor]:
    expected = None
    if verify:
        meta = read_manifest(ckpt_dir)["files"].get(f"{kind}/{shard_name}.safetensors")
        if meta is None:
            raise CheckpointError(f"checkpoint {ckpt_dir} has no {kind} file for shard {shard_name}")
        expected = meta["sha256"]
    return load_tensors(shard_file(ckpt_dir, shard_name, kind), expected)


def load_model_state(ckpt_dir: Path, verify: bool = True) -> dict[str, torch.Tensor]:
    """All model parameters of a checkpoint, merged across shards."""
    manifest = read_manifest(ckpt_dir)
    state: dict[str, torch.Tensor] = {}
    for rel, meta in sorted(manifest["files"].items()):
        if rel.startswith("shards/"):
            state.update(load_tensors(Path(ckpt_dir) / rel, meta["sha256"] if verify else None))
    if not state:
        raise CheckpointError(f"checkpoint {ckpt_dir} holds no model shards")
    return state


def read_state(ckpt_dir: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt_dir) / STATE).read_text())


def save_run_config(run_dir: Path, cfg: RunConfig, extra: dict[str, Any] | None = None) -> None:
    from perkunas_ray.config import to_dict

    data = to_dict(cfg)
    if extra:
        data.update(extra)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(run_dir) / "config.json", data)


def load_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run dir {run_dir} does not exist")
    if not path.is_file():
        raise CheckpointError(f"run dir {run_dir} has no config.json; is it a training run directory?")
    data = json.loads(path.read_text())
    data = {k: v for k, v in data.items() if k in SECTIONS}  # config.json also records its data dir
    return RunConfig.from_mapping(data).validate()


def encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode()


def decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def write_model_run_dir(run_dir: Path, cfg: ModelConfig, state: dict[str, torch.Tensor], tokenizer: Any,
                        step: int = 0, tokens_seen: int = 0) -> Path:
    """A loadable run dir for a model held in memory: config.json, tokenizer.json and one checkpoint.

    `tokenizer` is a `tokenizers.Tokenizer`; export, generate and serve read the result like a trained run.
    """
    from perkunas_ray.model.shards import split_state_dict

    run_dir = Path(run_dir)
    save_run_config(run_dir, RunConfig(model=cfg))
    tokenizer.save(str(run_dir / "tokenizer.json"))
    ckpt = run_dir / CHECKPOINTS / checkpoint_dir_name(step)
    if ckpt.exists():
        shutil.rmtree(ckpt)
    tensors = {name: value.detach().clone() for name, value in state.items()}
    write_checkpoint(ckpt, split_state_dict(cfg, tensors), {}, {"step": step, "tokens_seen": tokens_seen})
    return run_dir
