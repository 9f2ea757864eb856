"""`perkunas report`: charts present or omitted with a note, summary values, self-contained HTML, live runs."""

from __future__ import annotations

import json
import math
import re

import pytest

from perkunas_ray.cli import main
from perkunas_ray.errors import PerkunasError
from perkunas_ray.telemetry.report import build_charts, load_run, render_report, summarize, write_report
from perkunas_ray.telemetry.schema import TRAIN_LOG, TRAINER_STATE
from tests.unit.test_report_fixtures import write_reference_log, write_streaming_log

pytestmark = pytest.mark.unit

ALL_CHARTS = ["loss", "perplexity", "lr", "guard", "guard_replays", "grad_norm", "clip", "throughput", "timing",
              "residency", "prefetch", "flush", "memory"]


def chart_data(page: str) -> dict[str, dict]:
    """chart id -> the JSON the hover script reads."""
    out = {}
    for fig_id, blob in re.findall(r'<figure class="chart" id="([^"]+)">.*?<script type="application/json" '
                                   r'class="chart-data">(.*?)</script>', page, flags=re.S):
        out[fig_id] = json.loads(blob)
    return out


def test_streaming_log_gets_every_chart(tmp_path):
    write_streaming_log(tmp_path)
    charts, omitted = build_charts(load_run(tmp_path))
    assert [c.chart_id for c in charts] == ALL_CHARTS
    assert omitted == []
    page = render_report(load_run(tmp_path), "Streaming")
    data = chart_data(page)
    assert list(data) == ALL_CHARTS
    names = {cid: [s["name"] for s in d["series"]] for cid, d in data.items()}
    assert names["timing"] == ["wait", "forward", "backward", "update", "write", "other"]
    assert names["loss"] == ["train loss", "train loss (EMA)", "validation loss"]
    assert names["memory"] == ["RSS", "peak bytes", "resident shard bytes"]
    assert names["prefetch"] == ["hits", "misses"]
    assert data["memory"]["unit"] == "bytes" and data["timing"]["unit"] == "s"
    assert data["throughput"]["unit"] == "tok/s" and data["clip"]["unit"] == "%"
    # the stacked chart's read-out gives each part's own value, not the running sum
    forward = data["timing"]["series"][1]["y"]
    assert all(abs(v - 0.2) < 1e-6 for v in forward)
    val = data["loss"]["series"][2]
    assert val["x"] == [0, 50, 100, 150, 200]
    assert "Hit rate over the run" in page and "replays over 200 steps" in page


def test_reference_log_omits_absent_charts_with_a_note(tmp_path):
    write_reference_log(tmp_path)
    charts, omitted = build_charts(load_run(tmp_path))
    ids = [c.chart_id for c in charts]
    assert ids == ["loss", "perplexity", "lr", "grad_norm", "clip", "throughput", "timing", "memory"]
    assert len(omitted) == 4
    assert any(o.startswith("Accepted guard scale: the log has no guard_scale") for o in omitted)
    assert any("resident_shards" in o for o in omitted) and any("prefetch_hits" in o for o in omitted)
    assert any("flush_lag_steps" in o for o in omitted)
    page = render_report(load_run(tmp_path))
    assert "Charts left out" in page and "Not in this log: wait_s, write_s." in page
    assert "Perplexity" in page and "<svg" in page


def test_summary_values(tmp_path):
    write_streaming_log(tmp_path)
    (tmp_path / TRAINER_STATE).write_text(json.dumps({"step": 200}))
    rows = dict(summarize(load_run(tmp_path)))
    assert rows["steps"] == "200 logged (step 1 to 200)"
    assert rows["tokens seen"] == f"{200 * 4096:,}"
    best = 2.7 + 6.3 * math.exp(-200 / 60)
    assert rows["best validation loss"] == f"{best:.4f} at step 200"
    assert rows["best validation perplexity"] == f"{math.exp(best):.2f}"
    assert rows["median throughput"].endswith("tok/s")
    assert rows["checkpoints / durable flushes"] == "4 / 4"
    assert rows["status"].startswith("finished")
    assert rows["guard replays"].endswith("2 steps rejected")  # steps 97 and 194


def test_a_run_still_going(tmp_path):
    """A torn last line (the writer mid-line) is skipped; the report shows what is there."""
    write_streaming_log(tmp_path, num_steps=40, torn_tail=True)
    run = load_run(tmp_path)
    assert [r["step"] for r in run.steps] == list(range(1, 41))
    assert dict(summarize(run))["status"].startswith("running or stopped")
    out = write_report(tmp_path, tmp_path / "r.html")
    assert "40 steps" in out.read_text()


def test_a_log_with_no_steps_yet(tmp_path):
    (tmp_path / TRAIN_LOG).write_text('{"event": "validation", "step": 0, "val_loss": 9.1, "val_ppl": 8955.3}\n')
    page = render_report(load_run(tmp_path))
    assert "none logged yet" in page
    assert list(chart_data(page)) == ["loss", "perplexity"]
    (tmp_path / TRAIN_LOG).write_text("")
    assert "No step records yet." in render_report(load_run(tmp_path))


def test_resumed_log_keeps_the_last_record_of_a_step(tmp_path):
    lines = [{"event": "step", "step": s, "loss": 5.0} for s in (1, 2, 3)] + [{"event": "step", "step": 2, "loss": 4.0}]
    (tmp_path / TRAIN_LOG).write_text("".join(json.dumps(r) + "\n" for r in lines))
    run = load_run(tmp_path / TRAIN_LOG)
    assert [(r["step"], r["loss"]) for r in run.steps] == [(1, 5.0), (2, 4.0), (3, 5.0)]


def test_page_is_self_contained_and_escaped(tmp_path):
    write_streaming_log(tmp_path, num_steps=30)
    page = render_report(load_run(tmp_path), title='<script>alert("x")</script>')
    assert '<script>alert("x")</script>' not in page and "&lt;script&gt;" in page
    assert not re.search(r"(?:src|href)\s*=", page), "the report must not load anything"
    assert "http://" not in page and "https://" not in page and "@import" not in page
    assert page.count("<script>") == 1  # the hover script; chart data are JSON blocks


def test_long_runs_are_thinned(tmp_path):
    write_streaming_log(tmp_path, num_steps=5000)
    data = chart_data(render_report(load_run(tmp_path)))
    assert all(len(s["x"]) <= 900 for d in data.values() for s in d["series"])
    assert len(data["loss"]["series"][0]["x"]) > 400
    assert len({len(s["x"]) for s in data["timing"]["series"]}) == 1  # stacked layers stay aligned


def test_cli(tmp_path, capsys):
    write_reference_log(tmp_path / "run")
    out = tmp_path / "out" / "report.html"
    assert main(["report", str(tmp_path / "run"), "-o", str(out), "--title", "Tiny run"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    assert "<title>Tiny run</title>" in page
    assert main(["report", str(tmp_path / "run" / TRAIN_LOG), "-o", str(out)]) == 0
    assert "<title>Training run: run</title>" in out.read_text()


def test_missing_inputs_are_clear_errors(tmp_path, capsys):
    with pytest.raises(PerkunasError, match="does not exist"):
        load_run(tmp_path / "nope")
    with pytest.raises(PerkunasError, match="holds no train_log.jsonl"):
        load_run(tmp_path)
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    assert "holds no train_log.jsonl" in capsys.readouterr().err
