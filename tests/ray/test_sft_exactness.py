"""SFT on Ray actors equals the reference trainer: 5 steps from a parent run, uneven trained-token counts."""

from __future__ import annotations

import json

import pytest

from perkunas_ray.checkpoint import format as ckpt
from perkunas_ray.reference import ReferenceTrainer
from perkunas_ray.sft import prepare_sft
from tests.stream_helpers import max_relative_difference, small_config, small_data_dir, train_with_ray
from tests.unit.test_sft_data import write_records

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def parent_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    pretrain = small_data_dir(root / "pretrain")
    ReferenceTrainer(small_config(pretrain, root / "parent", max_steps=3), root / "parent", verbose=False).train()
    summary = prepare_sft([write_records(root / "records.jsonl", 120, words_per_part=2)],
                          pretrain / "tokenizer.json", root / "sft_data", seq_len=32)
    assert summary.num_samples["train"] >= 60
    return root / "parent", root / "sft_data"


def test_streamed_sft_equals_reference(ray_instance, tmp_path, parent_and_data):
    parent, data = parent_and_data
    overrides = dict(max_steps=5, checkpoint__parent_run_dir=str(parent), stream__max_resident_shards=2)
    ref = ReferenceTrainer(small_config(data, tmp_path / "ref", **overrides), tmp_path / "ref", verbose=False).train()
    got = train_with_ray(small_config(data, tmp_path / "stream", **overrides))
    relative = [abs(a - b) / abs(a) for a, b in zip(ref.losses, got.losses, strict=True)]
    assert len(relative) == 5 and max(relative) <= 1e-5, (ref.losses, got.losses)
    assert max_relative_difference(ckpt.load_model_state(ckpt.latest_checkpoint(tmp_path / "ref")),
                                   ckpt.load_model_state(ckpt.latest_checkpoint(tmp_path / "stream"))) <= 1e-5
    # step 0 is the parent's newest checkpoint (step 3), and both runs record it
    start = ckpt.load_model_state(tmp_path / "stream" / ckpt.CHECKPOINTS / ckpt.checkpoint_dir_name(0))
    assert max_relative_difference(ckpt.load_model_state(ckpt.latest_checkpoint(parent)), start) == 0.0
    for run in ("ref", "stream"):
        recorded = json.loads((tmp_path / run / "config.json").read_text())["checkpoint"]
        assert recorded["parent_run_dir"] == str(parent) and recorded["parent_step"] == 3
