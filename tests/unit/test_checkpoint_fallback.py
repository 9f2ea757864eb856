"""A newest checkpoint that fails its checksums does not stop resume, export, eval or serve: each falls back,
with a warning naming it, to the newest one that verifies."""

from __future__ import annotations

import pytest
import torch

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.format import (
    CHECKPOINTS,
    CheckpointFallbackWarning,
    checkpoint_dir_name,
    latest_checkpoint,
    load_model_state,
    write_checkpoint,
)
from perkunas_ray.checkpoint.resume import fetch_latest
from perkunas_ray.errors import CheckpointError
from perkunas_ray.export import export_hf
from perkunas_ray.export.manifest import read_export_manifest
from perkunas_ray.model import build_model, split_state_dict
from perkunas_ray.model_source import load_inference_model
from tests.unit.test_export_fixtures import make_run_dir, tiny_export_config

pytestmark = pytest.mark.unit

BAD = r"checkpoint step 5 is unusable \(checkpoint file .*step_00000005.* is corrupt.*\); falling back to step 2"


def _corrupt(ckpt):
    shard = sorted((ckpt / "shards").iterdir())[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Steps 2 (good) and 5 (a flipped byte in one shard)."""
    cfg = tiny_export_config()
    run = make_run_dir(tmp_path_factory.mktemp("fallback") / "run", cfg, train_steps=2)
    newer = write_checkpoint(run / CHECKPOINTS / checkpoint_dir_name(5),
                             split_state_dict(cfg, build_model(cfg, seed=9).state_dict()), {},
                             {"step": 5, "tokens_seen": 0})
    _corrupt(newer)
    return run


def test_latest_checkpoint_falls_back_with_a_warning(run_dir):
    with pytest.warns(CheckpointFallbackWarning, match=BAD):
        assert latest_checkpoint(run_dir).name == checkpoint_dir_name(2)


def test_export_falls_back(run_dir, tmp_path):
    with pytest.warns(CheckpointFallbackWarning, match=BAD):
        out = export_hf(run_dir, tmp_path / "hf")
    assert read_export_manifest(out)["source"]["step"] == 2


def test_eval_and_serve_load_the_fallback(run_dir):
    with pytest.warns(CheckpointFallbackWarning, match=BAD):
        loaded = load_inference_model(run_dir)
    assert loaded.step == 2
    want = load_model_state(run_dir / CHECKPOINTS / checkpoint_dir_name(2))
    assert torch.equal(loaded.model.state_dict()["model.norm.weight"], want["model.norm.weight"])


@pytest.mark.parametrize("location", ["local", "mock"])
def test_resume_falls_back_for_local_and_remote_durable_dirs(run_dir, tmp_path, location):
    durable = DurableDir(run_dir if location == "local" else "mock:///run")
    if location == "mock":
        for step in (2, 5):
            durable.upload_checkpoint(run_dir / CHECKPOINTS / checkpoint_dir_name(step), step)
    with pytest.warns(CheckpointFallbackWarning, match=BAD):
        step, ckpt = fetch_latest(durable, tmp_path / "active")
    assert step == 2 and ckpt.name == checkpoint_dir_name(2)


def test_when_nothing_verifies_the_error_names_every_failure(tmp_path):
    for step in (1, 2):
        _corrupt(write_checkpoint(tmp_path / CHECKPOINTS / checkpoint_dir_name(step),
                                  {"s0": {"w": torch.ones(4)}}, {}, {"step": step, "tokens_seen": 0}))
    with pytest.warns(CheckpointFallbackWarning), \
            pytest.raises(CheckpointError, match=r"no checkpoint passes verification \(step 2: .*; step 1: "):
        latest_checkpoint(tmp_path)
