"""Inline SVG line / stacked-area charts for the HTML run report: no JavaScript needed to draw, no network."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

WIDTH, HEIGHT = 660, 250
LEFT, RIGHT, TOP, BOTTOM = 70, 16, 12, 34
MAX_POINTS = 900  # per series; longer series keep each bucket's min and max so spikes survive
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#a16207", "#db2777")


@dataclass
class Series:
    name: str
    xs: list[float]
    ys: list[float]
    color: str = ""
    width: float = 1.6
    opacity: float = 1.0
    dashed: bool = False
    points: bool = False  # draw a dot per value (validation runs are sparse)


@dataclass
class Chart:
    chart_id: str
    title: str
    series: list[Series]
    unit: str = ""  # "", "s", "bytes", "tok/s", "%"
    log_y: bool = False
    stacked: bool = False
    hlines: list[tuple[float, str]] = field(default_factory=list)  # (y, label)
    vlines: list[tuple[float, str]] = field(default_factory=list)  # (x, label)
    note: str = ""
    x_label: str = "step"
    zero: bool = False  # start the y axis at 0 (amounts: bytes, tokens/s, counts)


# ---- numbers -------------------------------------------------------------------------------------------
def fmt(value: float, unit: str = "") -> str:
    """Short human-readable value; the inline JS tooltip mirrors these rules."""
    if value is None or not math.isfinite(value):
        return "–"
    a = abs(value)
    if unit == "bytes":
        for suffix, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if a >= scale:
                return f"{value / scale:.1f} {suffix}"
        return f"{value:.0f} B"
    if unit == "s":
        if a == 0:
            return "0 s"
        if a < 1e-3:
            return f"{value * 1e6:.0f} µs"
        if a < 1:
            return f"{value * 1e3:.1f} ms"
        if a < 120:
            return f"{value:.2f} s"
        return f"{value / 60:.1f} min"
    if unit == "%":
        return f"{value * 100:.1f}%"
    suffix = " tok/s" if unit == "tok/s" else ""
    if a >= 1e9:
        return f"{value / 1e9:.2f}G{suffix}"
    if a >= 1e6:
        return f"{value / 1e6:.2f}M{suffix}"
    if a >= 1e4:
        return f"{value / 1e3:.1f}k{suffix}"
    if a == 0:
        return f"0{suffix}"
    if a < 0.01:
        return f"{value:.2e}{suffix}"
    return f"{value:.4g}{suffix}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1,) if math.log10(hi / lo) > 3 else (1, 2, 5)
    return [m * 10**e for e in range(first, last + 1) for m in mults if lo <= m * 10**e <= hi]


def downsample(xs: Sequence[float], ys: Sequence[float], max_points: int = MAX_POINTS) -> tuple[list, list]:
    """Keep at most ~max_points points: each bucket's min and max, in order."""
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    buckets = max_points // 2
    out_x, out_y = [], []
    for b in range(buckets):
        i0, i1 = b * n // buckets, (b + 1) * n // buckets
        idx = range(i0, i1)
        finite = [i for i in idx if math.isfinite(ys[i])]
        if not finite:
            continue
        lo = min(finite, key=lambda i: ys[i])
        hi = max(finite, key=lambda i: ys[i])
        for i in sorted({lo, hi}):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y


def ema(values: Sequence[float], alpha: float) -> list[float]:
    out, acc = [], None
    for v in values:
        if math.isfinite(v):
            acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc if acc is not None else float("nan"))
    return out


# ---- drawing -------------------------------------------------------------------------------------------
def _stack(series: list[Series]) -> list[Series]:
    """Cumulative sums over the union of x values (a missing value counts as 0)."""
    xs = sorted({x for s in series for x in s.xs})
    lookups = [dict(zip(s.xs, s.ys, strict=True)) for s in series]
    out, acc = [], [0.0] * len(xs)
    for s, lookup in zip(series, lookups, strict=True):
        acc = [a + (lookup.get(x, 0.0) if math.isfinite(lookup.get(x, 0.0)) else 0.0) for a, x in zip(acc, xs, strict=True)]
        out.append(Series(s.name, xs, list(acc), s.color, s.width, s.opacity, s.dashed, s.points))
    return out


def render(chart: Chart) -> str:
    """One <figure>: SVG plot, HTML legend, and the (downsampled) data the hover script reads."""
    series = [s for s in chart.series if any(math.isfinite(y) for y in s.ys)]
    for i, s in enumerate(series):
        s.color = s.color or PALETTE[i % len(PALETTE)]
    if chart.stacked:  # stacked layers must keep the same x values: thin them with one common stride
        drawn = _stack(series)
        stride = max(1, math.ceil(len(drawn[0].xs) / MAX_POINTS)) if drawn else 1
        drawn = [Series(s.name, s.xs[::stride], s.ys[::stride], s.color, s.width, s.opacity, s.dashed, s.points)
                 for s in drawn]
    else:
        drawn = [Series(s.name, *downsample(s.xs, s.ys), s.color, s.width, s.opacity, s.dashed, s.points)
                 for s in series]
    if chart.log_y:
        drawn = [Series(s.name, s.xs, [y if y > 0 else float("nan") for y in s.ys], s.color, s.width, s.opacity,
                        s.dashed, s.points) for s in drawn]
    all_x = [x for s in drawn for x in s.xs] + [x for x, _ in chart.vlines]
    all_y = [y for s in drawn for y in s.ys if math.isfinite(y)] + [y for y, _ in chart.hlines]
    if chart.stacked or (chart.zero and not chart.log_y):
        all_y.append(0.0)
    if not all_x or not all_y:
        return ""
    x0, x1 = min(all_x), max(all_x)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(all_y), max(all_y)
    if chart.log_y:
        y0, y1 = math.log10(y0), math.log10(y1)
    if y1 == y0:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    else:
        pad = (y1 - y0) * 0.05
        lo = y0 - pad
        if not chart.log_y and y0 >= 0 > lo:  # do not invent negative values for a non-negative signal
            lo = 0.0
        y0, y1 = lo, y1 + pad
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        v = math.log10(y) if chart.log_y else y
        return TOP + (1 - (v - y0) / (y1 - y0)) * ph

    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
             f'aria-label="{html.escape(chart.title)}">',
             f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="plot"/>']
    if chart.log_y:
        y_ticks = log_ticks(10**y0, 10**y1)
    elif chart.unit == "bytes":  # round numbers of MiB / GiB, not of bytes
        scale = next((b for b in (2**30, 2**20, 2**10) if max(abs(y0), abs(y1)) >= b), 1)
        y_ticks = [t * scale for t in nice_ticks(y0 / scale, y1 / scale)]
    else:
        y_ticks = nice_ticks(y0, y1)
    for t in y_ticks:
        y = py(t)
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
                     f'{html.escape(fmt(t, chart.unit))}</text>')
    for t in nice_ticks(x0, x1, 6):
        x = px(t)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + ph}" class="grid"/>'
                     f'<text x="{x:.1f}" y="{TOP + ph + 16}" class="tick" text-anchor="middle">{fmt(t)}</text>')
    parts.append(f'<text x="{LEFT + pw / 2}" y="{HEIGHT - 4}" class="axis" text-anchor="middle">'
                 f'{html.escape(chart.x_label)}</text>')
    parts.append(f'<clipPath id="clip-{chart.chart_id}"><rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}"/>'
                 f'</clipPath><g clip-path="url(#clip-{chart.chart_id})">')
    for x, label in chart.vlines:
        parts.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{TOP}" y2="{TOP + ph}" class="vline">'
                     f'<title>{html.escape(label)}</title></line>')
    for y, label in chart.hlines:
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}" class="hline">'
                     f'<title>{html.escape(label)}</title></line>')
    previous: list[tuple[float, float]] | None = None
    for s in drawn:
        pts = [(px(x), py(y)) for x, y in zip(s.xs, s.ys, strict=True) if math.isfinite(y)]
        if chart.stacked and pts:
            base = previous if previous else [(x, py(max(y0, 0.0))) for x, _ in pts]
            poly = pts + list(reversed(base))
            parts.append(f'<path d="{_path(poly)}Z" fill="{s.color}" fill-opacity="0.55" stroke="none"/>')
            previous = pts
        parts.append(_polyline(s, px, py))
    parts.append("</g>")
    parts.append(f'<line class="cursor" x1="0" x2="0" y1="{TOP}" y2="{TOP + ph}" visibility="hidden"/></svg>')
    legend = "".join(f'<span class="key"><i style="background:{s.color}"></i>{html.escape(s.name)}</span>'
                     for s in drawn)
    legend += "".join(f'<span class="key"><i class="dash"></i>{html.escape(label)}</span>'
                      for _, label in chart.hlines[:1])
    tip_ys = [s.ys for s in drawn]
    if chart.stacked:  # the read-out shows each layer's own value, not the running sum
        tip_ys = [[y - b for y, b in zip(s.ys, below.ys, strict=True)] if i else s.ys
                  for i, (s, below) in enumerate(zip(drawn, [drawn[0], *drawn[:-1]], strict=True))]
    data = {"box": [LEFT, TOP, pw, ph], "x": [x0, x1], "unit": chart.unit, "xLabel": chart.x_label,
            "series": [{"name": s.name, "color": s.color, "x": [_num(x) for x in s.xs], "y": [_num(y) for y in ys]}
                       for s, ys in zip(drawn, tip_ys, strict=True)]}
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    note = f'<p class="note">{html.escape(chart.note)}</p>' if chart.note else ""
    return (f'<figure class="chart" id="{chart.chart_id}"><figcaption>{html.escape(chart.title)}</figcaption>'
            f'{"".join(parts)}<div class="legend">{legend}</div>{note}<div class="tip" hidden></div>'
            f'<script type="application/json" class="chart-data">{blob}</script></figure>')


def _num(v: float) -> float | None:
    return float(f"{v:.6g}") if math.isfinite(v) else None


def _path(pts: list[tuple[float, float]]) -> str:
    return "M" + "L".join(f"{x:.1f},{y:.1f}" for x, y in pts)


def _polyline(s: Series, px, py) -> str:
    segments, current = [], []
    for x, y in zip(s.xs, s.ys, strict=True):
        if math.isfinite(y):
            current.append((px(x), py(y)))
        elif current:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    dash = ' stroke-dasharray="5 3"' if s.dashed else ""
    out = [f'<path d="{" ".join(_path(seg) for seg in segments)}" fill="none" stroke="{s.color}" '
           f'stroke-width="{s.width}" stroke-opacity="{s.opacity}" stroke-linejoin="round"{dash}/>']
    if s.points:
        out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.color}"/>' for seg in segments for x, y in seg)
    return "".join(out)


# ---- the hover read-out (optional: the charts are complete without it) ----------------------------------
HOVER_SCRIPT = r"""
(function () {
  "use strict";
  function fmt(v, unit) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    var a = Math.abs(v);
    if (unit === "bytes") {
      var units = [["GiB", 1073741824], ["MiB", 1048576], ["KiB", 1024]];
      for (var i = 0; i < units.length; i++) if (a >= units[i][1]) return (v / units[i][1]).toFixed(1) + " " + units[i][0];
      return v.toFixed(0) + " B";
    }
    if (unit === "s") {
      if (a === 0) return "0 s";
      if (a < 1e-3) return (v * 1e6).toFixed(0) + " µs";
      if (a < 1) return (v * 1e3).toFixed(1) + " ms";
      if (a < 120) return v.toFixed(2) + " s";
      return (v / 60).toFixed(1) + " min";
    }
    if (unit === "%") return (v * 100).toFixed(1) + "%";
    var sfx = unit === "tok/s" ? " tok/s" : "";
    if (a >= 1e9) return (v / 1e9).toFixed(2) + "G" + sfx;
    if (a >= 1e6) return (v / 1e6).toFixed(2) + "M" + sfx;
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k" + sfx;
    if (a === 0) return "0" + sfx;
    if (a < 0.01) return v.toExponential(2) + sfx;
    return String(Number(v.toPrecision(4))) + sfx;
  }
  function nearest(xs, x) {
    var lo = 0, hi = xs.length - 1;
    while (hi - lo > 1) { var mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid; else hi = mid; }
    return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
  }
  var figures = document.querySelectorAll("figure.chart");
  figures.forEach(function (fig) {
    var data = JSON.parse(fig.querySelector("script.chart-data").textContent);
    var svg = fig.querySelector("svg"), cursor = svg.querySelector("line.cursor"), tip = fig.querySelector(".tip");
    var box = data.box;
    svg.addEventListener("mousemove", function (ev) {
      var r = svg.getBoundingClientRect(), sx = (ev.clientX - r.left) * svg.viewBox.baseVal.width / r.width;
      if (sx < box[0] || sx > box[0] + box[2]) { cursor.setAttribute("visibility", "hidden"); tip.hidden = true; return; }
      var x = data.x[0] + (sx - box[0]) / box[2] * (data.x[1] - data.x[0]);
      var lines = [], at = null;
      data.series.forEach(function (s) {
        if (!s.x.length) return;
        var i = nearest(s.x, x);
        if (at === null) at = s.x[i];
        lines.push('<span style="color:' + s.color + '">\u25CF</span> ' + s.name + ": " + fmt(s.y[i], data.unit));
      });
      cursor.setAttribute("x1", sx); cursor.setAttribute("x2", sx); cursor.setAttribute("visibility", "visible");
      tip.innerHTML = "<b>" + data.xLabel + " " + fmt(at, "") + "</b><br>" + lines.join("<br>");
      tip.style.left = Math.min(ev.clientX - r.left + 14, r.width - 200) + "px";
      tip.hidden = false;
    });
    svg.addEventListener("mouseleave", function () { cursor.setAttribute("visibility", "hidden"); tip.hidden = true; });
  });
  document.body.setAttribute("data-charts-ready", String(figures.length));
})();
"""
