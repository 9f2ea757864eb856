"""`perkunas bench serve`: the layer breakdown runs end to end on a real Serve; with a llama-server binary
(env PERKUNAS_LLAMA_SERVER), the same workload runs on it and the ratios are printed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from perkunas_ray.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.ray]

LLAMA_SERVER = os.environ.get("PERKUNAS_LLAMA_SERVER", "")
SMALL = ["bench", "serve", "--streams", "1,2", "--rounds", "1", "--new-tokens", "12", "--threads", "1"]


def _report(capsys) -> tuple[str, dict]:
    out = capsys.readouterr().out
    return out, json.loads(out.strip().splitlines()[-1])


def test_bench_serve_reports_every_layer(capsys):
    assert main(SMALL) == 0
    out, report = _report(capsys)
    assert "ms per output token" in out and "stack cost: engine / serve" in out
    for side in ("engine", "handle", "http"):
        for n in ("1", "2"):
            assert report["results"][side][n]["tokens_per_s"] > 0, (side, n)
    assert report["results"]["handle"]["1"]["replica_tokens_per_s"] > 0, "the replica's own timing came back"
    assert set(report["stack_cost"]) == {"1", "2"} and "vs_llamacpp" not in report
    assert set(report["results_alone"]) == {"engine"}, "only the engine runs before the Serve cluster"
    assert all(report["ray_tax_engine"][n] > 0 for n in ("1", "2")) and "alone (no Ray running)" in out


@pytest.mark.parametrize(("flags", "named"), [(["--vs-llamacpp", "/nonexistent/llama-server"], "--vs-llamacpp"),
                                              (["--streams", "1,x"], "--streams"), (["--rounds", "0"], "--rounds")])
def test_bench_serve_names_a_bad_flag(flags, named, capsys):
    assert main([*SMALL, *flags]) == 2
    assert named in capsys.readouterr().err


@pytest.mark.skipif(not LLAMA_SERVER, reason="set PERKUNAS_LLAMA_SERVER to a llama-server binary")
def test_bench_serve_vs_llamacpp(capsys):
    assert Path(LLAMA_SERVER).is_file(), f"PERKUNAS_LLAMA_SERVER={LLAMA_SERVER} is not a file"
    assert main([*SMALL, "--vs-llamacpp", LLAMA_SERVER]) == 0
    out, report = _report(capsys)
    assert "serve / llama-server" in out
    for n in ("1", "2"):
        assert report["results"]["llama.cpp"][n]["tokens_per_s"] > 0
        assert report["vs_llamacpp"][n] > 0 and report["engine_vs_llamacpp"][n] > 0
        assert report["results_alone"]["llama.cpp"][n]["tokens_per_s"] > 0 and report["vs_llamacpp_alone"][n] > 0
