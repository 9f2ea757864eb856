"""The plain streaming step (no Ray) equals the reference trainer: losses and final parameters."""

from __future__ import annotations

import pytest

from perkunas_ray.checkpoint.format import latest_checkpoint, load_model_state
from perkunas_ray.reference import ReferenceTrainer
from tests.stream_helpers import (
    max_relative_difference,
    small_config,
    small_data_dir,
    train_in_process,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return small_data_dir(tmp_path_factory.mktemp("stream_data"))


@pytest.mark.parametrize("optimizer,clip,tied", [
    ("adamw", "global", True),
    ("lion", "shard", False),
    ("adafactor", "global", False),
])
def test_streamed_steps_equal_reference(tmp_path, data_dir, optimizer, clip, tied):
    overrides = dict(optimizer=optimizer, grad_clip_mode=clip, max_steps=5, model__tie_embeddings=tied)
    ref_cfg = small_config(data_dir, tmp_path / "ref", **overrides)
    ref = ReferenceTrainer(ref_cfg, tmp_path / "ref", verbose=False).train()
    got = train_in_process(small_config(data_dir, tmp_path / "stream", **overrides))
    assert len(got.losses) == len(ref.losses) == 5
    for a, b in zip(ref.losses, got.losses, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)
    if clip == "global":
        import json
        steps = [json.loads(x) for x in (tmp_path / "stream" / "train_log.jsonl").read_text().splitlines()]
        assert any(r.get("clip_scale", 1.0) < 1.0 for r in steps if r["event"] == "step"), "clipping never triggered"
    ref_params = load_model_state(latest_checkpoint(tmp_path / "ref"))
    got_params = load_model_state(latest_checkpoint(tmp_path / "stream"))
    assert set(ref_params) == set(got_params)
    assert max_relative_difference(ref_params, got_params) <= 1e-5
    assert got.val_losses[-1][1] == pytest.approx(ref.val_losses[-1][1], rel=1e-5)


def test_a_wrong_update_is_caught(tmp_path, data_dir):
    """The comparison can fail: a different LR gives different parameters."""
    ref = ReferenceTrainer(small_config(data_dir, tmp_path / "ref", max_steps=3), tmp_path / "ref",
                           verbose=False).train()
    got = train_in_process(small_config(data_dir, tmp_path / "stream", max_steps=3, learning_rate=2e-3))
    assert ref.losses[0] == pytest.approx(got.losses[0], rel=1e-6)
    assert max_relative_difference(load_model_state(latest_checkpoint(tmp_path / "ref")),
                                   load_model_state(latest_checkpoint(tmp_path / "stream"))) > 1e-3
