"""`perkunas bench serve --engine native,vllm --vs-vllm-server --vs-ray-serve-llm` runs end to end on the real
servers (vLLM's own OpenAI server, Ray Serve LLM on CPU) and prints the vLLM ratios; bad flag combinations are
named."""

from __future__ import annotations

import json

import pytest

from perkunas_ray.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.ray]

SMALL = ["bench", "serve", "--preset", "tiny", "--streams", "1,2", "--rounds", "1", "--new-tokens", "8",
         "--prompt-tokens", "8", "--threads", "1", "--modes", "stream",
         "--no-direct-ingress"]


def test_bench_serve_with_vllm_sides(capsys: pytest.CaptureFixture) -> None:
    assert main([*SMALL, "--engine", "native,vllm", "--vs-vllm-server", "--vs-ray-serve-llm"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    for side in ("http", "http-vllm", "vllm-server", "ray-serve-llm"):
        for n in ("1", "2"):
            assert report["results"][side][n]["tokens_per_s"] > 0, (side, n)
    assert set(report["results_alone"]) == {"engine", "vllm-server"}, "vLLM's server runs alone first"
    for key in ("vs_vllm_server", "vs_vllm_server_alone", "native_vs_vllm", "vs_ray_serve_llm"):
        assert set(report[key]) == {"1", "2"} and all(v > 0 for v in report[key].values()), key
    assert "serve (engine vllm) / vLLM server, same cluster" in out and "TTFT p50" in out


@pytest.mark.parametrize(("flags", "named"), [(["--engine", "vllm"], "--engine"),
                                              (["--vs-vllm-server"], "--engine native,vllm"),
                                              (["--engine", "native,sglang"], "--engine")])
def test_bench_serve_names_a_bad_engine_flag(flags: list[str], named: str, capsys: pytest.CaptureFixture) -> None:
    assert main([*SMALL, *flags]) == 2
    assert named in capsys.readouterr().err
