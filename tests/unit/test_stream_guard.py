"""Guarded step replay: a loss rise triggers replays at smaller scales; reject restores the shard versions."""

from __future__ import annotations

import json

import pytest
import torch

from perkunas_ray.checkpoint.format import latest_checkpoint, list_checkpoints, load_model_state
from tests.stream_helpers import small_config, small_data_dir, train_in_process

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return small_data_dir(tmp_path_factory.mktemp("guard_data"))


def steps(run_dir):
    return [r for r in map(json.loads, (run_dir / "train_log.jsonl").read_text().splitlines()) if r["event"] == "step"]


@pytest.mark.parametrize("clip", ["global", "shard"])
def test_a_loss_rise_is_replayed_at_smaller_scales(tmp_path, data_dir, clip):
    cfg = small_config(data_dir, tmp_path / "run", max_steps=4, learning_rate=1.0, warmup_steps=0,
                       lr_schedule="constant", grad_clip_mode=clip, stream__guarded_step_replay=True,
                       stream__guard_replay_max_replays=3, stream__guard_replay_lr_scales=(1.0, 0.1, 0.01, 0.001),
                       stream__guard_replay_grad_norm_scales=(1.0, 0.5, 0.5, 0.5))
    result = train_in_process(cfg)
    records = steps(tmp_path / "run")
    assert result.step == 4
    replayed = [r for r in records if r["guard_replays"] > 0]
    assert replayed, [(r["loss"], r["guard_replays"]) for r in records]
    assert all(r["guard_scale"] < 1.0 for r in replayed)


def test_reject_on_exhaustion_keeps_the_old_parameters(tmp_path, data_dir):
    cfg = small_config(data_dir, tmp_path / "run", max_steps=1, learning_rate=5.0, warmup_steps=0,
                       lr_schedule="constant", max_grad_norm=0.0, stream__guarded_step_replay=True,
                       stream__guard_replay_max_replays=1, stream__guard_replay_lr_scales=(1.0,),
                       stream__guard_replay_grad_norm_scales=(1.0,), stream__guard_replay_on_exhaust="reject",
                       checkpoint__keep_last_checkpoints=5)
    train_in_process(cfg)
    (record,) = steps(tmp_path / "run")
    assert record["guard_accepted"] is False and record["guard_replays"] == 1
    initial = load_model_state(list_checkpoints(tmp_path / "run")[0][1])
    final = load_model_state(latest_checkpoint(tmp_path / "run"))
    assert all(torch.equal(initial[k], final[k]) for k in initial)
