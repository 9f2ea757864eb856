"""`perkunas plan`'s time model against a hand computation; its flags; the ~1.3B preset's size."""

from __future__ import annotations

import json

import pytest

from perkunas_ray.cli import main
from perkunas_ray.cli.plan import print_time
from perkunas_ray.config import RunConfig
from perkunas_ray.model.decoder import count_parameters
from perkunas_ray.model.presets import load_preset, preset_description
from perkunas_ray.stream.plan_overlap import step_time

pytestmark = pytest.mark.unit


def small_step(seq_len: int = 2048, micro_batch: int = 8, accumulation: int = 4) -> RunConfig:
    cfg = RunConfig()
    cfg.model = load_preset("small")
    cfg.train.seq_len, cfg.train.micro_batch_size, cfg.train.gradient_accumulation_steps = \
        seq_len, micro_batch, accumulation
    return cfg


def test_step_time_matches_a_hand_computation():
    # Pion small: N = 102,979,328 parameters, 16 layers of width 640, a tied 50,277 x 640 embedding; T = 2048,
    # 65,536 tokens a step; 1,000 TFLOP/s at MFU 0.5, 50 GB/s, 2 G parameters/s of host update
    n, tokens = 102_979_328, 65_536
    model = 6 * n + 12 * 16 * 640 * 2048  # 869,529,600 FLOPs a token
    hardware = model + 2 * n + 4 * 16 * 640 * 2048  # the replayed forward: 289,847,296 more
    compute_s = model * tokens / (0.5 * 1000e12)
    forward_s = compute_s * (hardware - model) / hardware
    shard_bytes = 4 * n + 4 * 50_277 * 640  # every shard, and the embedding again for the tied head
    st = step_time(small_step(), 1000e12, 0.5, 50e9, 2e9)
    assert st.tokens == tokens
    assert st.forward_s == pytest.approx(forward_s) and st.compute_s == pytest.approx(compute_s)
    assert st.forward_copy_s == pytest.approx(shard_bytes / 50e9)
    assert st.backward_copy_s == pytest.approx(shard_bytes / 50e9)  # uploads outweigh the 4N gradient bytes
    assert st.update_s == pytest.approx(n / 2e9)
    assert st.copy_hide_tokens == pytest.approx(shard_bytes / 50e9 / (forward_s / tokens), abs=1)
    assert st.update_hide_tokens == pytest.approx(n / 2e9 / (compute_s / tokens), abs=1)
    assert st.bound == "compute" and st.step_s == pytest.approx(compute_s)


def test_below_the_thresholds_the_step_waits_for_copies_then_for_the_update():
    st = step_time(small_step(), 1000e12, 0.5, 50e9, 2e9)
    few_tokens = small_step(seq_len=2048, micro_batch=1, accumulation=1)
    fast_host = step_time(few_tokens, 1000e12, 0.5, 50e9, 1000e9)
    assert fast_host.tokens < st.copy_hide_tokens and fast_host.bound == "shard copies"
    assert fast_host.step_s == pytest.approx(fast_host.forward_copy_s + fast_host.backward_copy_s)
    slow_host = step_time(small_step(), 1000e12, 0.5, 50e9, 0.2e9)
    assert slow_host.update_hide_tokens > slow_host.tokens and slow_host.bound == "host update"
    assert slow_host.step_s == pytest.approx(slow_host.update_s)


def test_plan_reports_the_time_model_on_cuda(capsys):
    args = ["plan", "--model", "tiny", "--budget", "8GiB", "--device", "cuda", "--seq-len",
            "128", "--micro-batch-size", "32", "--gpu", "h200", "--mfu", "0.5", "--link-gbps", "50", "--device-tflops",
            "1000", "--store-threads", "4", "--update-rate", "0.5"]
    assert main([*args, "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["time"]
    cfg = RunConfig()
    cfg.model = load_preset("tiny")
    cfg.train.seq_len, cfg.train.micro_batch_size, cfg.train.gradient_accumulation_steps = 128, 32, 1
    st = step_time(cfg, 1000e12, 0.5, 50e9, 4 * 0.5e9)
    assert t["gpu"] == "H200" and t["dtype"] == "bf16" and t["store_threads"] == 4 and t["tokens_per_step"] == 4096
    assert t["copy_hide_tokens"] == st.copy_hide_tokens and t["update_hide_tokens"] == st.update_hide_tokens
    print_time(t)
    assert f"shard copies hide from {st.copy_hide_tokens:,} tokens a step" in capsys.readouterr().out
    assert main([*args, "--mfu", "0"]) == 2
    assert "--mfu must be in (0, 1], got 0.0" in capsys.readouterr().err


def test_the_1b3_preset():
    assert count_parameters(load_preset("xxl")) == 1_260_701_696
    assert "1.26B" in preset_description("xxl")
