"""CUDA streaming steps (fp32, bf16): finite losses and the device peak (max_memory_allocated) within the budget."""

from __future__ import annotations

import json

import pytest
import torch

from perkunas_ray.model.decoder import count_parameters
from tests.stream_helpers import small_config, small_data_dir, train_in_process

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def gpu_config(tmp_path, dtype: str, run: str):
    data = small_data_dir(tmp_path / "data")
    cfg = small_config(data, tmp_path / run, max_steps=4, dtype=dtype, device="cuda", gradient_accumulation_steps=2,
                       model__d_model=1024, model__n_layers=8, model__d_ff=3072, model__n_heads=8,
                       model__n_kv_heads=4, model__tie_embeddings=False, stream__max_resident_shards=2,
                       stream__trace_storage="cpu")
    # params + grads + AdamW moments, fp32. The model is large enough that a quarter of its state leaves room
    # beside the cuBLAS workspaces (64 MiB on Hopper), which the allocator's peak includes.
    state = count_parameters(cfg.model) * 4 * 4
    cfg.stream.max_resident_bytes = state // 4
    return cfg.validate(), state


def step_records(run_dir):
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "step"]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cuda_streaming_steps_stay_within_budget(tmp_path, dtype):
    if dtype == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cfg, state = gpu_config(tmp_path, dtype, f"run-{dtype}")
    result = train_in_process(cfg)
    assert result.step == 4
    assert all(torch.isfinite(torch.tensor(loss)) for loss in result.losses), result.losses
    records = step_records(tmp_path / f"run-{dtype}")
    budget = cfg.stream.max_resident_bytes
    assert state >= 4 * budget
    assert all(0 < r["peak_bytes"] <= budget for r in records), [r["peak_bytes"] for r in records]
    assert all(r["resident_shards"] <= 2 for r in records)


def test_cuda_streaming_on_ray_actors(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed here (the GPU machine has none)")

    from tests.stream_helpers import train_with_ray

    cfg, _ = gpu_config(tmp_path, "fp32", "run-ray")
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, namespace="perkunas")
    try:
        result = train_with_ray(cfg)
    finally:
        ray.shutdown()
    assert result.step == 4
    records = step_records(tmp_path / "run-ray")
    assert all(0 < r["peak_bytes"] <= cfg.stream.max_resident_bytes for r in records)
