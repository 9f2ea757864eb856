"""The inline SVG charts: number formats, ticks, thinning that keeps spikes, stacking, log axes, empty input."""

from __future__ import annotations

import json
import math
import re

import pytest

from perkunas_ray.telemetry.report_charts import (
    Chart,
    Series,
    downsample,
    ema,
    fmt,
    log_ticks,
    nice_ticks,
    render,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("value", "unit", "text"), [
    (3 * 2**30, "bytes", "3.0 GiB"), (1536 * 2**10, "bytes", "1.5 MiB"), (12, "bytes", "12 B"),
    (0.0123, "s", "12.3 ms"), (2.5, "s", "2.50 s"), (300, "s", "5.0 min"), (4e-5, "s", "40 µs"),
    (0.25, "%", "25.0%"), (12345, "tok/s", "12.3k tok/s"), (3e-4, "", "3.00e-04"), (4.0134, "", "4.013"),
    (float("nan"), "", "–"), (0, "", "0"),
])
def test_fmt(value, unit, text):
    assert fmt(value, unit) == text


def test_ticks():
    assert nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(3.2, 3.9)[0] >= 3.2 and nice_ticks(3.2, 3.9)[-1] <= 3.9
    assert nice_ticks(1, 1) == [1]
    assert log_ticks(30, 9000) == [50, 100, 200, 500, 1000, 2000, 5000]
    assert log_ticks(1, 1e6) == [1, 10, 100, 1000, 10000, 100000, 1000000]


def test_downsample_keeps_spikes_and_bounds_the_size():
    xs = list(range(10000))
    ys = [1.0] * 10000
    ys[4321] = 50.0
    ys[777] = -3.0
    dx, dy = downsample(xs, ys, 500)
    assert len(dx) <= 500 and dx == sorted(dx)
    assert 50.0 in dy and -3.0 in dy
    assert downsample([1, 2], [3, 4], 500) == ([1, 2], [3, 4])


def test_ema_skips_gaps():
    out = ema([1.0, float("nan"), 3.0], 0.5)
    assert out[0] == 1.0 and out[1] == 1.0 and out[2] == 2.0
    assert math.isnan(ema([float("nan")], 0.5)[0])


def test_render_line_chart():
    svg = render(Chart("c1", "Loss & co", [Series("a", [1, 2, 3], [3.0, 2.0, 1.0]),
                                           Series("b", [1, 3], [2.0, float("nan")], points=True)],
                       hlines=[(1.5, "limit")], vlines=[(2, "checkpoint at step 2")]))
    assert svg.startswith('<figure class="chart" id="c1">') and "Loss &amp; co" in svg
    assert svg.count("<path") == 2 and svg.count("<circle") == 1
    assert "checkpoint at step 2" in svg and "limit" in svg
    data = json.loads(re.search(r'class="chart-data">(.*?)</script>', svg).group(1))
    assert data["series"][1]["y"] == [2.0, None]


def test_render_skips_empty_series_and_empty_charts():
    assert render(Chart("e", "Empty", [Series("a", [], [])])) == ""
    assert render(Chart("e", "NaN only", [Series("a", [1], [float("nan")])])) == ""
    svg = render(Chart("p", "Partly", [Series("a", [1, 2], [1.0, 2.0]), Series("b", [], [])]))
    assert ">a</span>" in svg and ">b</span>" not in svg


def test_stacked_chart_fills_layers_in_order():
    chart = Chart("s", "Stack", [Series("x", [1, 2], [1.0, 1.0]), Series("y", [1, 2], [2.0, 2.0])], stacked=True)
    svg = render(chart)
    assert svg.count('fill-opacity="0.55"') == 2
    data = json.loads(re.search(r'class="chart-data">(.*?)</script>', svg).group(1))
    assert [s["y"] for s in data["series"]] == [[1.0, 1.0], [2.0, 2.0]]


def test_log_axis_drops_non_positive_values():
    svg = render(Chart("l", "Log", [Series("a", [1, 2, 3], [100.0, 0.0, 10.0])], log_y=True))
    assert "<path" in svg and "nan" not in svg.lower().replace("nan\"", "")


def test_byte_axis_ticks_are_round_mebibytes():
    svg = render(Chart("m", "Memory", [Series("rss", [1, 2], [0.0, 900 * 2**20])], unit="bytes"))
    labels = re.findall(r'class="tick" text-anchor="end">([^<]+)<', svg)
    assert labels == ["0 B", "200.0 MiB", "400.0 MiB", "600.0 MiB", "800.0 MiB"]
