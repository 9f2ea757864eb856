"""`perkunas bench train` runs both trainers on one model and prints a table and one JSON line."""

from __future__ import annotations

import json

import pytest

from perkunas_ray.cli import main
from tests.stream_helpers import small_data_dir

pytestmark = pytest.mark.unit


def test_bench_train_prints_ratios(tmp_path, capsys):
    data = small_data_dir(tmp_path / "data")
    code = main(["bench", "train", "--in-process", "--steps", "2", "--warmup", "1", "--d-model", "64",
                 "--n-layers", "6", "--d-ff", "256", "--micro-batch-size", "2", "--data-dir", str(data),
                 "--device", "cpu", "--work-dir", str(tmp_path / "work")])
    assert code == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["bench"] == "train"
    assert result["throughput_ratio"] > 0 and result["memory_ratio"] > 0
    assert result["training_state_bytes"] >= 4 * result["budget_bytes"] * 0.99
    assert result["stream_within_budget"] is True
    assert "tokens/s" in out and "orchestration s" in out


def test_bench_train_sizes_prints_one_row_per_size(tmp_path, capsys):
    data = small_data_dir(tmp_path / "data")
    code = main(["bench", "train", "--in-process", "--sizes", "0.2M,1M", "--steps", "1", "--warmup", "1",
                 "--micro-batch-size", "2", "--gradient-accumulation-steps", "1", "--data-dir", str(data),
                 "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(results) == 2 and results[0]["params"] < results[1]["params"]
    for r in results:
        assert r["throughput_ratio"] > 0 and r["memory_ratio"] > 0
        assert 0 < r["stream_mfu"] < r["stream_hfu"] and r["reference_mfu"] > 0
        assert r["stream_breakdown_s"]["orchestration_s"] >= 0
    assert "stream MFU" in out and "tput ratio" in out


def test_sizes_pick_shapes_near_the_asked_count():
    from perkunas_ray.bench.train_sizes import parse_sizes, shape_for
    from perkunas_ray.config import ModelConfig
    from perkunas_ray.model.decoder import count_parameters

    for size in parse_sizes("8M,30M,100M"):
        d_model, n_layers, d_ff = shape_for(size)
        cfg = ModelConfig(vocab_size=8192, d_model=d_model, n_layers=n_layers, n_heads=4, n_kv_heads=2, d_ff=d_ff)
        assert abs(count_parameters(cfg) - size) < 0.15 * size, (size, d_model, n_layers)


@pytest.mark.parametrize("text", ["8X", "10", "abc", "1M,,2M"])
def test_bad_sizes_are_named(text, capsys):
    assert main(["bench", "train", "--sizes", text]) == 2
    assert "--sizes" in capsys.readouterr().err
