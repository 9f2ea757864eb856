"""`perkunas bench train` on Ray: the streamed run and the reference on Ray Train workers of one local Ray, and the
reference outside Ray beside them."""

from __future__ import annotations

import json

import pytest

from perkunas_ray.cli import main
from tests.stream_helpers import small_data_dir

pytestmark = pytest.mark.ray


def test_bench_train_on_ray_reports_both_references(tmp_path, capsys):
    data = small_data_dir(tmp_path / "data")
    code = main(["bench", "train", "--steps", "1", "--warmup", "1", "--d-model", "64", "--n-layers", "6",
                 "--d-ff", "256", "--micro-batch-size", "2", "--gradient-accumulation-steps", "2",
                 "--data-dir", str(data), "--device", "cpu", "--work-dir", str(tmp_path / "work")])
    assert code == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["runtime"] == "ray-train" and result["trace_storage"] == "object-store"
    assert result["reference_tokens_per_s"] > 0 and result["reference_outside_ray_tokens_per_s"] > 0
    assert result["throughput_ratio_outside_ray"] == pytest.approx(
        result["stream_tokens_per_s"] / result["reference_outside_ray_tokens_per_s"])
    assert result["stream_within_budget"] is True, (result["stream_peak_bytes"], result["budget_bytes"])
    assert "reference outside Ray" in out
