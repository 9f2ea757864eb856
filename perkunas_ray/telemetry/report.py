"""The self-contained HTML run report: summary table and inline-SVG charts built from train_log.jsonl."""

from __future__ import annotations

import html
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perkunas_ray.errors import PerkunasError
from perkunas_ray.telemetry.report_charts import HOVER_SCRIPT, Chart, Series, ema, fmt, render
from perkunas_ray.telemetry.report_workers import workers_html
from perkunas_ray.telemetry.schema import TRAIN_LOG, TRAINER_STATE, read_log

TIMING_FIELDS = (("wait_s", "wait"), ("forward_s", "forward"), ("backward_s", "backward"),
                 ("update_s", "update"), ("write_s", "write"))
MAX_MARKERS = 60  # checkpoint / flush lines per chart


@dataclass
class RunLog:
    log_path: Path
    steps: list[dict[str, Any]]
    validations: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]
    flushes: list[dict[str, Any]]
    config: dict[str, Any] | None = None
    state: dict[str, Any] | None = None
    other_events: dict[str, int] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)  # data parallel: "worker" records
    starts: list[dict[str, Any]] = field(default_factory=list)  # "start" / "restart" records of the worker group

    def series(self, name: str, records: list[dict[str, Any]] | None = None) -> tuple[list[float], list[float]]:
        """(steps, values) of the records that carry a finite number for `name`."""
        xs, ys = [], []
        for r in self.steps if records is None else records:
            v = r.get(name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and "step" in r:
                xs.append(float(r["step"]))
                ys.append(float(v))
        return xs, ys

    def has(self, name: str, records: list[dict[str, Any]] | None = None) -> bool:
        return bool(self.series(name, records)[0])


def resolve_log(path: str | Path) -> Path:
    """A run directory (its train_log.jsonl, or its active dir's) or a path to a .jsonl log."""
    p = Path(path)
    if p.is_dir():
        for candidate in (p / TRAIN_LOG, p / "active" / TRAIN_LOG):
            if candidate.is_file():
                return candidate
        raise PerkunasError(f"{p} holds no {TRAIN_LOG}: pass a run directory or the path of a train_log.jsonl")
    if p.is_file():
        return p
    raise PerkunasError(f"{p} does not exist: pass a run directory or the path of a train_log.jsonl")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_run(path: str | Path) -> RunLog:
    """Read what is there: a run still going has a torn last line, which read_log skips."""
    log_path = resolve_log(path)
    records = read_log(log_path)
    by_step: dict[int, dict[str, Any]] = {}
    validations: dict[int, dict[str, Any]] = {}
    checkpoints, flushes, workers, starts, other = [], [], [], [], {}
    for r in records:
        if not isinstance(r, dict):
            continue
        event = r.get("event")
        if event == "step" and isinstance(r.get("step"), (int, float)):
            by_step[int(r["step"])] = r  # a resumed run that re-logged a step: the later record wins
        elif event == "validation" and isinstance(r.get("step"), (int, float)):
            validations[int(r["step"])] = r
        elif event == "checkpoint":
            checkpoints.append(r)
        elif event == "flush":
            flushes.append(r)
        elif event == "worker" and "worker" in r:
            workers.append(r)
        elif event in ("start", "restart"):
            starts.append(r)
        else:
            other[str(event)] = other.get(str(event), 0) + 1
    run_dir = log_path.parent
    return RunLog(log_path, [by_step[k] for k in sorted(by_step)], [validations[k] for k in sorted(validations)],
                  checkpoints, flushes, _read_json(run_dir / "config.json"), _read_json(run_dir / TRAINER_STATE),
                  other, workers, starts)


# ---- charts --------------------------------------------------------------------------------------------
def _smoothing(n: int) -> float:
    return min(1.0, 2.0 / (max(n, 1) / 25 + 1))


def _markers(events: list[dict[str, Any]], label: str) -> list[tuple[float, str]]:
    marks = [(float(e["step"]), f"{label} at step {e['step']}") for e in events
             if isinstance(e.get("step"), (int, float))]
    stride = max(1, math.ceil(len(marks) / MAX_MARKERS))
    return marks[::stride]


def _config_value(run: RunLog, section: str, key: str) -> Any:
    return ((run.config or {}).get(section) or {}).get(key)


def build_charts(run: RunLog) -> tuple[list[Chart], list[str]]:
    """The charts this log has data for, and a note for each chart left out."""
    charts: list[Chart] = []
    omitted: list[str] = []

    def add(chart: Chart, needs: str) -> None:
        if any(any(math.isfinite(y) for y in s.ys) for s in chart.series):
            charts.append(chart)
        else:
            omitted.append(f"{chart.title}: the log has no {needs}")

    xs, loss = run.series("loss")
    loss_ema = ema(loss, _smoothing(len(loss)))
    vx, vloss = run.series("val_loss", run.validations)
    loss_series = [Series("train loss", xs, loss, "#93c5fd", 1.0), Series("train loss (EMA)", xs, loss_ema, "#2563eb"),
                   Series("validation loss", vx, vloss, "#dc2626", 2.0, points=True)] if xs else \
        [Series("validation loss", vx, vloss, "#dc2626", 2.0, points=True)]
    add(Chart("loss", "Train and validation loss", loss_series,
              vlines=_markers(run.checkpoints, "checkpoint") + _markers(run.flushes, "durable flush")),
        "loss or val_loss")

    px, ppl = run.series("val_ppl", run.validations)
    if not px:
        px, ppl = vx, [math.exp(min(v, 50.0)) for v in vloss]
    add(Chart("perplexity", "Perplexity", [
        Series("train perplexity (EMA)", xs, [math.exp(min(v, 50.0)) if math.isfinite(v) else v for v in loss_ema],
               "#2563eb"),
        Series("validation perplexity", px, ppl, "#dc2626", 2.0, points=True)], log_y=True), "loss or val_ppl")

    lx, lr = run.series("lr")
    gx, guard = run.series("guard_scale")
    lr_series = [Series("learning rate", lx, lr, "#9333ea", 2.6, 0.6)]  # wide, so the dashed line stays apart
    if gx:
        scale = dict(zip(gx, guard, strict=True))
        lr_series.append(Series("lr × accepted guard scale", lx, [v * scale.get(x, 1.0) for x, v in zip(lx, lr, strict=True)],
                                "#ea580c", 1.2, dashed=True))
    add(Chart("lr", "Learning rate", lr_series), "lr")

    rx, replays = run.series("guard_replays")
    rejected = sum(1 for r in run.steps if r.get("guard_accepted") is False)
    note = (f"{int(sum(replays))} replays over {len(rx)} steps; {rejected} steps rejected." if rx else "")
    add(Chart("guard", "Accepted guard scale", [Series("accepted scale", gx, guard, "#ea580c")], unit="%",
              note=note), "guard_scale (guarded step replay was off)")
    if rx and any(replays):
        charts.append(Chart("guard_replays", "Guard replays per step", [Series("replays", rx, replays, "#a16207")]))

    nx, norm = run.series("grad_norm")
    max_norm = _config_value(run, "train", "max_grad_norm")
    hlines = [(float(max_norm), f"max_grad_norm = {max_norm}")] if isinstance(max_norm, (int, float)) and \
        max_norm > 0 and nx else []
    add(Chart("grad_norm", "Gradient norm (before clipping)", [
        Series("grad norm", nx, norm, "#0891b2", 1.0, 0.5),
        Series("grad norm (EMA)", nx, ema(norm, _smoothing(len(norm))), "#0e7490")], hlines=hlines), "grad_norm")
    cx, clip = run.series("clip_scale")
    add(Chart("clip", "Clip scale (100% = not clipped)", [Series("clip scale", cx, clip, "#16a34a")], unit="%"),
        "clip_scale")

    tx, tps = run.series("tokens_per_s")
    add(Chart("throughput", "Throughput", [
        Series("tokens/s", tx, tps, "#86efac", 1.0), Series("tokens/s (EMA)", tx, ema(tps, _smoothing(len(tps))),
                                                           "#16a34a")], unit="tok/s", zero=True),
        "tokens_per_s")

    parts = [(label, run.series(name)) for name, label in TIMING_FIELDS if run.has(name)]
    timing = [Series(label, x, y) for label, (x, y) in parts]
    sx, step_time = run.series("step_time_s")
    if timing and sx:
        known: dict[float, float] = {}
        for _, (x, y) in parts:
            for xi, yi in zip(x, y, strict=True):
                known[xi] = known.get(xi, 0.0) + yi
        other = [max(0.0, t - known.get(x, 0.0)) for x, t in zip(sx, step_time, strict=True)]
        if any(o > 1e-3 * max(step_time) for o in other):
            timing.append(Series("other", sx, other, "#9ca3af"))
    elif sx:
        timing = [Series("step time", sx, step_time)]
    missing = [name for name, _ in TIMING_FIELDS if not run.has(name)]
    add(Chart("timing", "Step time breakdown", timing, unit="s", stacked=bool(parts),
              note=f"Not in this log: {', '.join(missing)}." if parts and missing else ""),
        "step_time_s or timing fields")

    add(Chart("residency", "Shard residency and pending writes", [
        Series("resident shards", *run.series("resident_shards"), "#2563eb"),
        Series("pending shard writes", *run.series("pending_writes"), "#ea580c")], zero=True),
        "resident_shards or pending_writes (the reference trainer keeps the whole model resident)")
    hx, hits = run.series("prefetch_hits")
    mx, misses = run.series("prefetch_misses")
    total = sum(hits) + sum(misses)
    add(Chart("prefetch", "Prefetch hits and misses per step", [
        Series("hits", hx, hits, "#16a34a"), Series("misses", mx, misses, "#dc2626")], zero=True,
        note=f"Hit rate over the run: {sum(hits) / total:.1%}." if total else ""), "prefetch_hits or prefetch_misses")
    add(Chart("flush", "Durable flush lag", [
        Series("steps since durable flush", *run.series("flush_lag_steps"), "#9333ea")],
        vlines=_markers(run.flushes, "durable flush"), zero=True), "flush_lag_steps")

    add(Chart("memory", "Memory", [
        Series("RSS", *run.series("rss_bytes"), "#2563eb"),
        Series("peak bytes", *run.series("peak_bytes"), "#dc2626", 2.0, dashed=True),
        Series("resident shard bytes", *run.series("resident_bytes"), "#16a34a")], unit="bytes", zero=True),
        "peak_bytes, rss_bytes or resident_bytes")
    return charts, omitted


# ---- summary -------------------------------------------------------------------------------------------
def summarize(run: RunLog) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    steps = run.steps
    if steps:
        first, last = steps[0], steps[-1]
        rows.append(("steps", f"{len(steps):,} logged (step {first['step']} to {last['step']})"))
        if isinstance(last.get("tokens_seen"), (int, float)):
            rows.append(("tokens seen", f"{int(last['tokens_seen']):,}"))
    else:
        rows.append(("steps", "none logged yet"))
    _, loss = run.series("loss")
    if loss:
        tail = loss[-max(1, len(loss) // 20):]
        rows.append(("train loss", f"{loss[0]:.4f} first → {loss[-1]:.4f} last "
                                   f"(mean of the last {len(tail)}: {statistics.fmean(tail):.4f})"))
    vx, vloss = run.series("val_loss", run.validations)
    if vloss:
        i = min(range(len(vloss)), key=vloss.__getitem__)
        rows.append(("best validation loss", f"{vloss[i]:.4f} at step {int(vx[i])}"))
        rows.append(("best validation perplexity", f"{math.exp(min(vloss[i], 50.0)):.2f}"))
        rows.append(("last validation loss", f"{vloss[-1]:.4f} (perplexity {math.exp(min(vloss[-1], 50.0)):.2f}) "
                                             f"at step {int(vx[-1])}"))
    bx, bpb = run.series("val_bpb", run.validations)
    if bpb:
        i = min(range(len(bpb)), key=bpb.__getitem__)
        rows.append(("validation bits per byte", f"{bpb[i]:.4f} best (step {int(bx[i])}), {bpb[-1]:.4f} last"))
    for name, label, unit in (("tokens_per_s", "median throughput", "tok/s"), ("step_time_s", "median step time", "s")):
        _, ys = run.series(name)
        if ys:
            rows.append((label, fmt(statistics.median(ys), unit)))
    _, step_time = run.series("step_time_s")
    if step_time:
        rows.append(("time in steps", fmt(sum(step_time), "s")))
    for name, label in (("peak_bytes", "max peak memory"), ("rss_bytes", "max RSS")):
        _, ys = run.series(name)
        if ys:
            rows.append((label, fmt(max(ys), "bytes")))
    _, replays = run.series("guard_replays")
    if replays:
        rejected = sum(1 for r in steps if r.get("guard_accepted") is False)
        rows.append(("guard replays", f"{int(sum(replays)):,} in total, {rejected} steps rejected"))
    rows.append(("checkpoints / durable flushes", f"{len(run.checkpoints)} / {len(run.flushes)}"))
    state_step = (run.state or {}).get("step")
    if steps and state_step == steps[-1]["step"]:
        status = "finished (trainer_state.json matches the last step)"
    else:
        age = time.time() - run.log_path.stat().st_mtime
        status = f"running or stopped: log last written {fmt(age, 's')} ago"
    rows.append(("status", status))
    return rows


# ---- page ----------------------------------------------------------------------------------------------
CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px;color:#111827;
background:#f9fafb}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}.sub{color:#6b7280;margin:0 0 16px}
table{border-collapse:collapse;background:#fff;border:1px solid #e5e7eb}
td,th{padding:4px 12px;border-bottom:1px solid #f3f4f6;text-align:left;vertical-align:top}th{color:#374151;font-weight:600}
.grid{stroke:#eef0f3}.plot{fill:#fff;stroke:#d1d5db}.tick{font-size:11px;fill:#6b7280}.axis{font-size:11px;fill:#374151}
.vline{stroke:#9ca3af;stroke-dasharray:2 3}.hline{stroke:#111827;stroke-dasharray:6 4}.cursor{stroke:#111827;stroke-width:.6}
.charts{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:16px}
@media (max-width:1100px){.charts{grid-template-columns:1fr}}figure.chart svg{width:100%;height:auto;display:block}
figure.chart{margin:0;background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:10px;position:relative}
figcaption{font-weight:600;margin-bottom:4px}.legend{font-size:12px;color:#374151;margin-top:2px}
.key{margin-right:14px;white-space:nowrap}.key i{display:inline-block;width:14px;height:3px;margin-right:5px;
vertical-align:middle}.key i.dash{border-top:2px dashed #111827;height:0}.note{color:#6b7280;font-size:12px;margin:4px 0 0}
.tip{position:absolute;top:36px;background:rgba(17,24,39,.92);color:#fff;font-size:12px;padding:6px 8px;
border-radius:4px;pointer-events:none;min-width:150px}.tip[hidden]{display:none}
ul.omitted{color:#6b7280}details pre{background:#fff;border:1px solid #e5e7eb;padding:8px;overflow:auto;max-height:400px}
"""


def render_report(run: RunLog, title: str | None = None) -> str:
    title = title or f"Training run: {run.log_path.parent.name}"
    charts, omitted = build_charts(run)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summarize(run))
    figures = "".join(render(c) for c in charts)
    omitted_html = ("<h2>Charts left out</h2><ul class='omitted'>"
                    + "".join(f"<li>{html.escape(o)}</li>" for o in omitted) + "</ul>") if omitted else ""
    config_html = ""
    if run.config:
        config_html = ("<details><summary>config.json</summary><pre>"
                       + html.escape(json.dumps(run.config, indent=2, sort_keys=True)) + "</pre></details>")
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width\"><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=\"sub\">{html.escape(str(run.log_path))} · "
        f"{len(run.steps):,} steps, {len(run.validations)} validations · generated {generated}</p>"
        f"<h2>Summary</h2><table>{rows}</table>"
        f"<h2>Charts</h2><div class=\"charts\">{figures or '<p>No step records yet.</p>'}</div>"
        f"{workers_html(run.workers, run.starts)}{omitted_html}{config_html}"
        f"<script>{HOVER_SCRIPT}</script></body></html>\n"
    )


def write_report(run_path: str | Path, out: str | Path, title: str | None = None) -> Path:
    """Render the report of a run directory (or train_log.jsonl) into one HTML file; returns its path."""
    run = load_run(run_path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render_report(run, title), encoding="utf-8")
    tmp.replace(out)
    return out


build_report = write_report  # the name the training driver calls after a run: build_report(run_dir, out)
