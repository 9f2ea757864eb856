"""`perkunas bench serve` runs end to end on a real Serve (streamed and whole requests; the layer breakdown with a
separate ingress); with a llama-server binary (env PERKUNAS_LLAMA_SERVER), the same workload runs on it, alone,
and the ratios are printed."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

from perkunas_ray.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.ray]

LLAMA_SERVER = os.environ.get("PERKUNAS_LLAMA_SERVER", "")
SMALL = ["bench", "serve", "--streams", "1,2", "--rounds", "1", "--new-tokens", "12", "--threads", "1"]


def _report(capsys) -> tuple[str, dict]:
    out = capsys.readouterr().out
    return out, json.loads(out.strip().splitlines()[-1])


def test_bench_serve_reports_both_modes_and_the_ray_tax(capsys):
    """One model on one replica: the routes run in the engine replica (no handle side); streamed and whole."""
    assert main(SMALL) == 0
    out, report = _report(capsys)
    assert report["ingress_combined"] is True and "stack cost engine/http" in out
    for side in ("engine", "http", "http-whole", "http-proxy"):  # direct ingress, and the proxy to the same replica
        for n in ("1", "2"):
            assert report["results"][side][n]["tokens_per_s"] > 0, (side, n)
    assert report["results"]["http"]["1"]["chunks_per_request"] > 1, "a stream arrives in several events"
    assert report["results"]["http-whole"]["1"]["chunks_per_request"] == 1
    for side in ("http", "http-whole"):  # where the round's CPU went, read from the replica's /proc per thread
        row = report["results"][side]["2"]
        for key in ("event_loop_cpu_ms_per_token", "torch_cpu_ms_per_token", "client_cpu_ms_per_token"):
            assert 0 < row[key] < 100, (side, key, row[key])
        assert 0 <= row["torch_waiting_for_cpu"] <= 100 and "http event loop, ms CPU / token" in out
    engine = report["results"]["engine"]["2"]  # the in-process engine's own threads; it has no load client
    assert 0 < engine["torch_cpu_ms_per_token"] < 100 and "client_cpu_ms_per_token" not in engine
    assert set(report["stack_cost"]) == {"1", "2"} and set(report["stack_cost_whole"]) == {"1", "2"}
    assert "vs_llamacpp" not in report and "handle" not in report["results"]
    assert set(report["results_alone"]) == {"engine"}, "only the engine runs before the Serve cluster"
    assert all(report["ray_tax_engine"][n] > 0 for n in ("1", "2")) and "alone (no Ray running)" in out


def test_bench_serve_separate_ingress_reports_every_layer(capsys):
    assert main([*SMALL, "--ingress", "separate", "--modes", "stream", "--streams", "1"]) == 0
    out, report = _report(capsys)
    assert report["ingress_combined"] is False and "ms per output token" in out
    assert report["results"]["handle"]["1"]["replica_tokens_per_s"] > 0, "the replica's own timing came back"
    assert report["breakdown_ms_per_token"]["1"]["serve_ms"] > 0 and "http-whole" not in report["results"]


def test_bench_serve_repeats_both_phases_in_turn(capsys):
    """--repeats 2: alone, a Serve cluster, alone again, a fresh cluster; ratios across phases per repeat."""
    assert main([*SMALL, "--repeats", "2", "--streams", "1", "--modes", "stream"]) == 0
    out, report = _report(capsys)
    assert report["repeats"] == 2 and "repeat 2 of 2" in out
    assert out.count("alone (no Ray running):") == 2 and out.count("beside the Serve cluster:") == 2
    taxes = report["ray_tax_engine_by_repeat"]["1"]
    assert len(taxes) == 2 and all(t > 0 for t in taxes)
    assert report["ray_tax_engine"]["1"] == pytest.approx(statistics.median(taxes)), "the median of the repeats'"


@pytest.mark.parametrize(("flags", "named"), [(["--vs-llamacpp", "/nonexistent/llama-server"], "--vs-llamacpp"),
                                              (["--streams", "1,x"], "--streams"), (["--rounds", "0"], "--rounds"),
                                              (["--repeats", "0"], "--repeats"),
                                              (["--modes", "stream,sse"], "--modes")])
def test_bench_serve_names_a_bad_flag(flags, named, capsys):
    assert main([*SMALL, *flags]) == 2
    assert named in capsys.readouterr().err


@pytest.mark.skipif(not LLAMA_SERVER, reason="set PERKUNAS_LLAMA_SERVER to a llama-server binary")
def test_bench_serve_vs_llamacpp(capsys):
    assert Path(LLAMA_SERVER).is_file(), f"PERKUNAS_LLAMA_SERVER={LLAMA_SERVER} is not a file"
    assert main([*SMALL, "--vs-llamacpp", LLAMA_SERVER, "--repeats", "2"]) == 0
    out, report = _report(capsys)
    for n in ("1", "2"):  # each repeat's serve / llama-server, its phases back to back; the ratio their median
        each = report["vs_llamacpp_by_repeat"][n]
        assert len(each) == 2 and report["vs_llamacpp"][n] == pytest.approx(statistics.median(each))
    assert "http / llama.cpp alone" in out and "llama.cpp" not in report["results"], "llama-server runs alone only"
    for n in ("1", "2"):
        for side in ("llama.cpp", "llama.cpp-whole"):
            assert report["results_alone"][side][n]["tokens_per_s"] > 0
        assert report["vs_llamacpp"][n] > 0 and report["vs_llamacpp_whole"][n] > 0
        assert report["engine_vs_llamacpp"][n] > 0 and report["itl_vs_llamacpp"][n] > 0
