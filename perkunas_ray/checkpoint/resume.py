"""Find the newest complete durable checkpoint and bring it, verified, into the active dir."""

from __future__ import annotations

from pathlib import Path

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.format import CHECKPOINTS, MANIFEST, checkpoint_dir_name, verify_checkpoint


def fetch_latest(durable: DurableDir, active_dir: Path) -> tuple[int, Path] | None:
    """(step, local checkpoint dir) of the newest complete durable checkpoint, or None when there is none.

    The copy lands in the active dir and is checked against its manifest; a corrupt file raises
    CheckpointError naming it (and nothing in the durable dir is touched).
    """
    steps = durable.list_checkpoints()
    if not steps:
        return None
    step = steps[-1]
    if durable.local_path is not None:
        local = durable.local_path / CHECKPOINTS / checkpoint_dir_name(step)
        verify_checkpoint(local)  # read in place: a local durable dir needs no copy
        return step, local
    local = active_dir / CHECKPOINTS / checkpoint_dir_name(step)
    if not (local / MANIFEST).is_file() or _differs(durable, step, local):
        durable.download_checkpoint(step, local)
    verify_checkpoint(local)
    return step, local


def _differs(durable: DurableDir, step: int, local: Path) -> bool:
    remote = durable.read_bytes(f"{CHECKPOINTS}/{checkpoint_dir_name(step)}/{MANIFEST}")
    return remote != (local / MANIFEST).read_bytes()
