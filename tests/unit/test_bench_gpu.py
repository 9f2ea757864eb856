"""`perkunas bench gpu` without a GPU: a clean message and a JSON line; --device cpu --tiny runs its plumbing."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from perkunas_ray.bench import gpu

pytestmark = pytest.mark.unit


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    gpu.register(parser.add_subparsers())
    return parser.parse_args(["gpu", *argv])


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without CUDA")
def test_without_cuda_it_says_so_and_exits_cleanly(capsys):
    assert gpu.run(parse()) == 0
    captured = capsys.readouterr()
    assert "no CUDA device" in captured.err
    assert json.loads(captured.out) == {"bench": "gpu", "skipped": "no CUDA device"}
    assert gpu.run(parse("--device", "cpu")) == 2  # the done-when runs are refused off CUDA


def test_tiny_cpu_smoke_prints_one_json_line_with_both_runs(capsys):
    assert gpu.run(parse("--device", "cpu", "--tiny", "--steps", "1", "--warmup", "0")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    resident, streamed = result["runs"]["tiny_resident"], result["runs"]["tiny_streamed"]
    assert resident["dtype"] == streamed["dtype"] == "fp32"
    assert resident["losses_finite"] and streamed["losses_finite"]
    assert resident["last_loss"] == streamed["last_loss"]  # one step from the same init: the same numbers
    assert streamed["budget_bytes"] == resident["training_state_bytes"] // 4
    assert streamed["peak_within_budget"]
    assert result["streamed_over_resident"] > 0
    delayed = result["runs"]["tiny_streamed_delayed"]
    assert delayed["delayed_update"] and delayed["losses_finite"]


def test_the_done_when_runs_are_the_issues():
    cases = {c.name: c for c in gpu.done_when_cases(2048)}
    for case in cases.values():
        assert case.micro_batch_size * case.accumulation * 2048 >= 65536
    assert cases["small_streamed"].quarter_of == "small_resident"
    assert cases["xl_streamed_8gib"].budget_bytes == cases["xxl_streamed_8gib"].budget_bytes == 8 * 2**30
