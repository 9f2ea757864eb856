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
    assert "tokens/s" in out
