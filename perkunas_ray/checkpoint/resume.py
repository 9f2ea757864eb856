"""Find the newest durable checkpoint that verifies and bring it into the active dir."""

from __future__ import annotations

from pathlib import Path

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.format import CHECKPOINTS, MANIFEST, checkpoint_dir_name, newest_verified


def fetch_latest(durable: DurableDir, active_dir: Path) -> tuple[int, Path] | None:
    """(step, local checkpoint dir) of the newest durable checkpoint that verifies, or None when there is none.

    The copy lands in the active dir and is checked against its manifest; a corrupt newest one is skipped
    with a CheckpointFallbackWarning naming it (nothing in the durable dir is touched), and when no
    checkpoint verifies, the CheckpointError names every failure.
    """
    return newest_verified(durable.list_checkpoints(), lambda step: local_checkpoint(durable, step, active_dir),
                           f"run dir {durable.location}")


def local_checkpoint(durable: DurableDir, step: int, active_dir: Path) -> Path:
    """This node's copy of durable checkpoint `step`: the durable dir in place when it is a path, else a copy in
    `active_dir` (downloaded unless one with the same manifest is there)."""
    if durable.local_path is not None:
        return durable.local_path / CHECKPOINTS / checkpoint_dir_name(step)  # read in place: no copy needed
    local = active_dir / CHECKPOINTS / checkpoint_dir_name(step)
    if not (local / MANIFEST).is_file() or _differs(durable, step, local):
        durable.download_checkpoint(step, local)
    return local


def _differs(durable: DurableDir, step: int, local: Path) -> bool:
    remote = durable.read_bytes(f"{CHECKPOINTS}/{checkpoint_dir_name(step)}/{MANIFEST}")
    return remote != (local / MANIFEST).read_bytes()
