"""`perkunas bench engine` runs end to end on a tiny preset and reports its JSON line (no timing asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from perkunas_ray.cli import main

pytestmark = pytest.mark.unit


def test_bench_engine_smoke(capsys: pytest.CaptureFixture) -> None:
    before = torch.get_num_threads()
    try:
        assert main(["bench", "engine", "--preset", "tiny", "--max-seq-len", "128", "--concurrency", "1,2",
                     "--new-tokens", "4", "--repeats", "1", "--prefix-tokens", "32", "--suffix-tokens", "4",
                     "--num-prefixes", "1", "--kv-budget-mib", "0.5", "--capacity-requests", "50",
                     "--skip-hf"]) == 0
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["bench"] == "engine" and set(result["throughput"]) == {"1", "2"}
    assert result["ttft"]["cached_tokens"] == 32
    cap = result["capacity"]
    assert cap["paged_model"] >= cap["contiguous_model"] and cap["paged_int8"] > cap["paged_model"]
    assert "(a) output tokens/s" in out and "(c) sequences fitting" in out
