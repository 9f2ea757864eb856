"""A model whose training state is 4x the memory budget trains; the compute actor's measured peak stays inside it."""

from __future__ import annotations

import json

import pytest

from perkunas_ray.model.decoder import count_parameters
from tests.stream_helpers import small_config, small_data_dir, train_with_ray

pytestmark = pytest.mark.ray

BUDGET = 8_000_000


def big_config(tmp_path, budget: int):
    data = small_data_dir(tmp_path / "data")
    cfg = small_config(data, tmp_path / "run", max_steps=4, gradient_accumulation_steps=2,
                       stream__max_resident_shards=2, stream__max_resident_bytes=budget, stream__prefetch_window=1,
                       model__d_model=128, model__n_layers=8, model__d_ff=512, model__tie_embeddings=False)
    return cfg


def test_model_four_times_the_budget_trains_within_it(ray_instance, tmp_path):
    cfg = big_config(tmp_path, BUDGET)
    num_params = count_parameters(cfg.model)
    full_state = num_params * 4 * (1 + 1 + 2)  # fp32 params + grads + AdamW's two moments
    assert full_state >= 4 * BUDGET, full_state
    result = train_with_ray(cfg)
    assert result.step == 4 and all(loss == loss for loss in result.losses)
    steps = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["event"] == "step"]
    peaks = [r["peak_bytes"] for r in steps]
    assert max(peaks) <= BUDGET, peaks
    # the figure is a real measurement: it covers two resident block shards, their gradients and activations
    block_bytes = (num_params - 2 * cfg.model.vocab_size * cfg.model.d_model) * 4 // cfg.model.n_layers
    assert min(peaks) > 2 * block_bytes, (peaks, block_bytes)
    assert all(r["resident_shards"] <= 2 for r in steps)
    assert all(r["rss_bytes"] > 0 for r in steps)


def test_a_budget_below_one_shard_is_a_config_error(ray_instance, tmp_path):
    from perkunas_ray.errors import ConfigError
    from perkunas_ray.stream.compute import StreamCompute

    cfg = big_config(tmp_path, 1_000_000)
    import torch

    with pytest.raises(ConfigError, match="max_resident_bytes"):
        StreamCompute(cfg, torch.device("cpu"))
