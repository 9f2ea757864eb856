"""2 data-parallel workers (Ray Train, gloo) equal 1 worker with 2x gradient accumulation, sample for sample."""

from __future__ import annotations

import pytest
import ray

from perkunas_ray.checkpoint.format import latest_checkpoint, load_model_state
from perkunas_ray.telemetry.schema import read_log
from tests import stream_helpers as helpers

pytestmark = pytest.mark.ray


def test_two_workers_equal_one_worker_with_double_accumulation(tmp_path, one_torch_thread):
    data = helpers.small_data_dir(tmp_path / "data")
    common = dict(max_steps=5, optimizer="adamw", grad_clip_mode="global", save_every=0)
    one = helpers.train_in_process(helpers.small_config(data, tmp_path / "one", gradient_accumulation_steps=2,
                                                        **common))
    ray.init(num_cpus=2, include_dashboard=False, namespace="perkunas")
    try:
        two = helpers.train_with_ray(helpers.small_config(data, tmp_path / "two", gradient_accumulation_steps=1,
                                          ray__num_workers=2, ray__compute_threads=1, **common))
    finally:
        ray.shutdown()
    assert len(two.losses) == 5
    for a, b in zip(one.losses, two.losses, strict=True):
        assert abs(a - b) <= 1e-6 * abs(a), (one.losses, two.losses)
    assert helpers.max_relative_difference(load_model_state(latest_checkpoint(tmp_path / "one")),
                                   load_model_state(latest_checkpoint(tmp_path / "two"))) <= 1e-6
    log = read_log(tmp_path / "two" / "train_log.jsonl")
    steps = [r for r in log if r["event"] == "step"]
    assert any(r["clip_scale"] < 1.0 for r in steps), "max_grad_norm too large: clipping never triggered"
    assert [r["tokens_seen"] for r in steps] == [r["tokens_seen"] for r in read_log(
        tmp_path / "one" / "train_log.jsonl") if r["event"] == "step"]  # the global batch: both workers' tokens
    workers = [r for r in log if r["event"] == "worker"]
    assert sorted({(r["step"], r["worker"]) for r in workers}) == [(s, w) for s in range(1, 6) for w in (0, 1)]
    assert all(r["tokens_per_s"] > 0 and r["reduce_s"] >= 0 and r["wait_s"] >= 0 for r in workers)
    start = next(r for r in log if r["event"] == "start")
    assert start["num_workers"] == 2 and len(set(start["worker_pids"])) == 2
