"""`perkunas plan`: the predicted peak agrees with real streamed steps; budgets and sizes are checked at the edge."""

from __future__ import annotations

import json

import pytest
import torch

from perkunas_ray.cli import main
from perkunas_ray.config import RunConfig
from perkunas_ray.errors import ConfigError
from perkunas_ray.model.presets import load_preset
from perkunas_ray.stream.plan import check_budget, largest_fitting, parse_bytes, predict
from perkunas_ray.stream.plan_measure import measure_peak

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")


def plan_config(preset: str, micro_batch: int, accumulation: int, seq_len: int, budget: int = 0,
                **model_overrides) -> RunConfig:
    cfg = RunConfig()
    cfg.model = load_preset(preset, **model_overrides)
    t = cfg.train
    t.micro_batch_size, t.gradient_accumulation_steps, t.seq_len = micro_batch, accumulation, seq_len
    cfg.stream.max_resident_bytes = budget
    return cfg


CONFIGS = {  # different presets and shapes, seq_len, micro-batch, accumulation, layout, budget
    "tiny, tied head, 2x2 micro-batches of 32": plan_config("tiny", 2, 2, 32),
    "nano, qk-norm, 2 layers per shard, 3 of 48": plan_config("nano", 3, 1, 48, vocab_size=1024),
    "micro, untied, budget-gated read-ahead": plan_config("micro", 1, 2, 40, budget=31 * 2**20, vocab_size=512,
                                                          tie_embeddings=False, d_ff=512),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_predicted_peak_is_within_15_percent_of_the_measured_one(name):
    cfg = CONFIGS[name]
    predicted = predict(cfg).peak_bytes
    measured = measure_peak(cfg, CPU)
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)


def test_the_budget_gates_read_ahead_as_the_runtime_does():
    cfg = CONFIGS["micro, untied, budget-gated read-ahead"]
    plan = predict(cfg)
    assert any(s.read_ahead for s in plan.stages) and not all(s.read_ahead for s in plan.stages[:-1])
    unbounded = predict(plan_config("micro", 1, 2, 40, vocab_size=512, tie_embeddings=False, d_ff=512))
    assert unbounded.peak_bytes > plan.peak_bytes


def test_a_budget_too_small_for_one_shard_names_the_shard_and_its_size():
    cfg = plan_config("tiny", 2, 1, 32)
    floor = predict(cfg).floor_bytes
    with pytest.raises(ConfigError, match=r"shard shard_\d{3}_\w+ \(\w[\w-]*\) needs [\d,]+ bytes") as info:
        check_budget(cfg, floor - 1)
    assert f"{floor:,}" in str(info.value)
    check_budget(cfg, floor)


def test_the_cli_refuses_a_small_budget_with_exit_2(capsys):
    assert main(["plan", "--model", "tiny", "--budget", "1MiB", "--seq-len", "32"]) == 2
    err = capsys.readouterr().err
    assert "too small" in err and "shard_" in err and "--budget" in err


def test_the_cli_prints_prediction_beside_measurement(tmp_path, capsys):
    model_file = tmp_path / "model.yaml"
    model_file.write_text("model:\n  vocab_size: 512\n  d_model: 64\n  n_layers: 2\n  n_heads: 4\n  n_kv_heads: 2\n"
                          "  d_ff: 128\n  max_seq_len: 64\n")
    code = main(["plan", "--model", str(model_file), "--budget", "4MiB", "--seq-len", "16", "--micro-batch-size",
                 "2", "--measure", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["measured_peak_bytes"] > 0
    assert abs(result["predicted_peak_bytes"] - result["measured_peak_bytes"]) <= 0.15 * result["measured_peak_bytes"]
    assert result["largest_micro_batch"] >= 2
    assert abs(result["measured_largest_micro_batch"] - result["largest_micro_batch"]) <= 1
    assert [row["layers_per_shard"] for row in result["layouts"]] == [1, 2]
    assert result["host_total_bytes"] == sum(result["host_bytes"].values())


def test_the_table_says_whether_the_model_fits(capsys):
    assert main(["plan", "--model", "tiny", "--budget", "1GiB", "--seq-len", "64", "--micro-batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "fits the budget" in out and "largest micro-batch within the budget" in out and "host RAM" in out


@pytest.mark.parametrize("argv, message", [
    (["--model", "no-such-model", "--budget", "1GiB"], "neither a preset"),
    (["--model", "tiny", "--budget", "eight gigs"], "--budget must be a size"),
    (["--model", "tiny", "--budget", "1GiB", "--seq-len", "4096"], "--seq-len must be <="),
    (["--model", "tiny", "--budget", "1GiB", "--micro-batch-size", "0"], "--micro-batch-size must be > 0"),
    pytest.param(["--model", "tiny", "--budget", "1GiB", "--device", "cuda", "--measure"], "needs CUDA",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_arguments_are_named(argv, message, capsys):
    assert main(["plan", *argv]) == 2
    assert message in capsys.readouterr().err


def test_sizes_parse_with_binary_and_decimal_units():
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("512 MiB") == 512 * 2**20
    assert parse_bytes("2.5GB") == 2_500_000_000
    assert parse_bytes("1000") == 1000
    for bad in ("", "-1GiB", "GiB", "1XB"):
        with pytest.raises(ConfigError, match="--budget"):
            parse_bytes(bad)


def test_largest_fitting_finds_the_edge():
    for edge in (1, 2, 3, 17, 64, 1000):
        assert largest_fitting(lambda n, e=edge: n <= e) == edge
        assert largest_fitting(lambda n, e=edge: n <= e, start=min(edge, 5)) == edge
    assert largest_fitting(lambda n: False) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the workspace is measured there")
def test_a_cuda_plan_counts_the_logits_chunk_and_the_cublas_workspaces():
    cfg = plan_config("micro", 4, 1, 128, vocab_size=512)
    cpu, cuda = predict(cfg).peak, predict(cfg, "cuda").peak
    assert cpu.head_chunk == cpu.workspace == 0
    assert cuda.workspace == 2 * 32 * 2**20  # a cuBLAS workspace per thread (forward, autograd's), Hopper's size
    head = next(s for s in predict(cfg, "cuda").stages if s.shard.endswith("head") and s.phase == "backward")
    assert head.head_chunk == 2 * min(4 * 128, cfg.model.lm_head_chunk_tokens) * 512 * 4


def test_cublas_workspace_follows_pytorchs_rule(monkeypatch):
    from perkunas_ray.stream.memory import cublas_workspace_bytes

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert cublas_workspace_bytes(9) == 2 * 32 * 2**20
    assert cublas_workspace_bytes(8) == 2 * (8 * 2**20 + 128 * 2**10)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the deterministic-algorithms setting
    assert cublas_workspace_bytes(9) == 2 * 16 * 1024 * 8
