"""The streaming runtime on Ray actors equals the reference trainer (fp32, fixed seed, 10 steps)."""

from __future__ import annotations

import json

import pytest

from perkunas_ray.checkpoint.format import latest_checkpoint, load_model_state
from perkunas_ray.reference import ReferenceTrainer
from tests.stream_helpers import max_relative_difference, small_config, small_data_dir, train_with_ray

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return small_data_dir(tmp_path_factory.mktemp("stream_data"))


@pytest.mark.parametrize("optimizer,clip,tied,traces", [
    ("adamw", "global", True, "cpu"),
    ("lion", "global", False, "cpu"),
    ("adafactor", "global", True, "cpu"),
    ("adamw", "shard", False, "cpu"),
    ("adamw", "global", True, "object-store"),  # boundaries leave the worker, one object per boundary
])
def test_ray_runtime_equals_reference(ray_instance, tmp_path, data_dir, optimizer, clip, tied, traces):
    overrides = dict(optimizer=optimizer, grad_clip_mode=clip, max_steps=10, model__tie_embeddings=tied,
                     stream__max_resident_shards=2, save_every=5, checkpoint__durable_flush_every=5,
                     stream__trace_storage=traces)
    ref = ReferenceTrainer(small_config(data_dir, tmp_path / "ref", **overrides), tmp_path / "ref",
                           verbose=False).train()
    got = train_with_ray(small_config(data_dir, tmp_path / "stream", **overrides))
    assert len(got.losses) == 10
    for a, b in zip(ref.losses, got.losses, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a), (ref.losses, got.losses)
    assert max_relative_difference(load_model_state(latest_checkpoint(tmp_path / "ref")),
                                   load_model_state(latest_checkpoint(tmp_path / "stream"))) <= 1e-5
    steps = [json.loads(line) for line in (tmp_path / "stream" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["event"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 11))
    assert all(r["resident_shards"] <= 2 for r in steps)
    if clip == "global":
        assert any(r["clip_scale"] < 1.0 for r in steps), "max_grad_norm too large: clipping never triggered"
