"""Checkpoint writes survive crashes and failures: temp + fsync + rename, a manifest only when whole, no
leftovers after a failed write, stale leftovers cleaned at run start, pruning that spares unflushed steps."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from perkunas_ray.checkpoint import atomic
from perkunas_ray.checkpoint import durable as durable_module
from perkunas_ray.checkpoint import format as format_module
from perkunas_ray.checkpoint.cleanup import clean_stale_writes
from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.format import (
    CHECKPOINTS,
    MANIFEST,
    checkpoint_dir_name,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    save_tensors,
    write_checkpoint,
    write_json_atomic,
)
from perkunas_ray.checkpoint.prune import retention_warnings, steps_to_prune

pytestmark = pytest.mark.unit


def _write(run_dir: Path, step: int) -> Path:
    ckpt = run_dir / CHECKPOINTS / checkpoint_dir_name(step)
    return write_checkpoint(ckpt, {"s0": {"w": torch.full((4,), float(step))}}, {"s0": {}},
                            {"step": step, "tokens_seen": 0})


def _leftovers(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tmp"))


@pytest.mark.parametrize("content", [b"", b'{"format_version": 1, "files": {"shards/s0.safe', b"[]", b"{}"])
def test_an_empty_or_half_written_manifest_is_not_a_complete_checkpoint(tmp_path, content):
    _write(tmp_path, 1)
    newest = _write(tmp_path, 2)
    (newest / MANIFEST).write_bytes(content)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1]
    assert latest_checkpoint(tmp_path).name == checkpoint_dir_name(1)
    assert DurableDir(tmp_path).list_checkpoints() == [1]


def _fail_on_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    """The durable copy of a manifest dies half-way (disk full, lost connection)."""
    real = shutil.copyfileobj

    def copy(src, dst, *args):
        if Path(src.name).name == MANIFEST:
            dst.write(src.read(10))
            raise OSError("disk full")
        return real(src, dst, *args)

    monkeypatch.setattr(durable_module.shutil, "copyfileobj", copy)


@pytest.mark.parametrize("location", ["local", "mock"])
def test_a_failed_durable_copy_leaves_no_manifest_no_temp_file_and_no_partial_step(tmp_path, monkeypatch, location):
    active = tmp_path / "active"
    ckpt = _write(active, 3)
    durable = DurableDir(tmp_path / "durable" if location == "local" else "mock:///durable")
    _fail_on_manifest(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        durable.upload_checkpoint(ckpt, 3)
    assert durable.list_checkpoints() == []
    assert [rel for rel, _ in durable.list_dir("", recursive=True) if "step_" in rel] == []
    monkeypatch.undo()
    durable.upload_checkpoint(ckpt, 3)
    assert durable.list_checkpoints() == [3]
    assert [rel for rel, _ in durable.list_dir("", recursive=True) if rel.endswith(".tmp")] == []


def test_files_are_fsynced_before_the_manifest_that_names_them(tmp_path, monkeypatch):
    synced: list[str] = []
    real = atomic.fsync_file
    monkeypatch.setattr(atomic, "fsync_file", lambda path: (synced.append(Path(path).name), real(path))[1])
    _write(tmp_path, 1)
    assert synced[-1] == MANIFEST + ".tmp"
    assert {"s0.safetensors.tmp", "state.json.tmp"} <= set(synced[:-1])


def test_a_failed_tensor_or_json_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def disk_full(tensors, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(format_module, "save_file", disk_full)
    with pytest.raises(OSError, match="disk full"):
        save_tensors(tmp_path / "a.safetensors", {"w": torch.ones(2)})
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "state.json", {"bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_run_start_cleaning_removes_temp_files_and_abandoned_older_steps_only(tmp_path):
    for step in (1, 3):
        _write(tmp_path, step)
    abandoned = _write(tmp_path, 2)
    (abandoned / MANIFEST).unlink()
    in_flight = _write(tmp_path, 4)
    (in_flight / MANIFEST).unlink()
    (tmp_path / CHECKPOINTS / checkpoint_dir_name(3) / "shards" / "s1.safetensors.tmp").write_bytes(b"x")
    (tmp_path / "config.json.tmp").write_text("{")
    removed = clean_stale_writes(DurableDir(tmp_path))
    assert sorted(removed) == ["checkpoints/step_00000002", "checkpoints/step_00000003/shards/s1.safetensors.tmp",
                               "config.json.tmp"]
    assert not abandoned.exists() and in_flight.exists() and _leftovers(tmp_path) == []
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1, 3]


@pytest.mark.parametrize(("steps", "keep", "flushed", "expected"), [
    ([10, 20, 30], 2, None, [10]),
    ([10, 20, 30], 1, None, [10, 20]),
    ([10, 20, 30], 1, 10, [10]),  # 20 may still be on its way to the durable dir
    ([10, 20, 30], 1, -1, []),  # nothing flushed yet: nothing goes
    ([30, 10, 20], 1, 30, [10, 20]),
])
def test_steps_to_prune_spares_the_newest_and_the_unflushed(steps, keep, flushed, expected):
    assert steps_to_prune(steps, keep, flushed) == expected


def test_active_and_durable_pruning_spare_unflushed_steps(tmp_path):
    for step in (10, 20, 30):
        _write(tmp_path / "active", step)
    prune_checkpoints(tmp_path / "active", keep=1, last_flushed_step=10)
    assert [step for step, _ in list_checkpoints(tmp_path / "active")] == [20, 30]
    durable = DurableDir(tmp_path / "durable")
    for step in (20, 30):
        durable.upload_checkpoint(tmp_path / "active" / CHECKPOINTS / checkpoint_dir_name(step), step)
    assert durable.prune(1, last_flushed_step=20) == [20] and durable.list_checkpoints() == [30]


def test_retention_warnings_name_the_setting():
    assert retention_warnings(2, 50, 0) == []
    assert "keep_last_checkpoints=1 keeps no older checkpoint" in retention_warnings(1, 50, 0)[0]
    assert "durable_flush_every=0" in retention_warnings(2, 0, 10)[0]
