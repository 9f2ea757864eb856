"""The HTML report of a real (short) training run opens in headless Chromium with no console errors."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from perkunas_ray.cli import main
from perkunas_ray.telemetry.report import build_charts, load_run
from tests.unit.test_report_fixtures import write_streaming_log

pytestmark = pytest.mark.integration

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
WINDOW = (1400, 3000)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install -y chromium)")


def chromium(page: Path, profile: Path, *action: str) -> tuple[str, list[str]]:
    """Run headless Chromium on a local file; returns stdout and the console lines from its log."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # a page that reaches for the network logs an error
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
            f"--window-size={WINDOW[0]},{WINDOW[1]}", *action, page.resolve().as_uri()]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, console


def png_stats(path: Path) -> tuple[int, int, float]:
    """(width, height, share of non-zero bytes in the filtered image data): ~0 for a blank page."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)[::7]
    return size[0], size[1], sum(1 for b in raw if b) / len(raw)


def check_page(page: Path, tmp: Path, expected_charts: int) -> Path:
    dom, console = chromium(page, tmp / "profile-dom", "--dump-dom")
    assert not console, "console messages:\n" + "\n".join(console)
    # the inline script ran to the end and found every chart
    assert f'data-charts-ready="{expected_charts}"' in dom
    shot = tmp / f"{page.stem}.png"
    _, console = chromium(page, tmp / "profile-shot", f"--screenshot={shot}")
    assert not console, "console messages:\n" + "\n".join(console)
    width, height, ink = png_stats(shot)
    assert (width, height) == WINDOW
    assert ink > 0.005, f"the screenshot looks blank ({ink:.4%} non-zero bytes)"
    return shot


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A few steps of the reference trainer on the bundled TinyStories slice: a real train_log.jsonl."""
    root = tmp_path_factory.mktemp("real")
    assert main(["prepare", "--output-dir", str(root / "data"), "--seq-len", "64", "--vocab-size", "2048",
                 "--progress", "off"]) == 0
    assert main(["train-reference", "--config", "tiny", "--data-dir", str(root / "data"), "--run-dir",
                 str(root / "run"), "--max-steps", "8", "--validate-every", "4", "--max-validation-batches", "2",
                 "--micro-batch-size", "4", "--gradient-accumulation-steps", "1", "--vocab-size", "2048",
                 "--seq-len", "64", "--max-seq-len", "64", "--save-every", "4"]) == 0
    return root / "run"


@needs_chromium
def test_report_of_a_real_run_renders_cleanly(real_run, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", str(real_run), "-o", str(out), "--title", "Reference run"]) == 0
    charts, omitted = build_charts(load_run(real_run))
    assert {"loss", "perplexity", "lr", "grad_norm", "throughput", "timing", "memory"} <= {c.chart_id for c in charts}
    shot = check_page(out, tmp_path, len(charts))
    assert shot.stat().st_size > 20_000


@needs_chromium
def test_report_with_every_field_renders_cleanly(tmp_path):
    run = tmp_path / "streaming"
    write_streaming_log(run, num_steps=300, torn_tail=True)
    out = tmp_path / "streaming.html"
    assert main(["report", str(run), "-o", str(out)]) == 0
    check_page(out, tmp_path, len(build_charts(load_run(run))[0]))


@needs_chromium
def test_the_checks_can_fail(tmp_path):
    """A script error, a network fetch and a blank page are all caught by the same checks."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><body><img src="https://example.invalid/x.png">'
                   "<script>document.body.dataset.chartsReady = 1; notDefined();</script></body>")
    _, console = chromium(bad, tmp_path / "profile-bad", "--dump-dom")
    assert any("Uncaught ReferenceError" in line for line in console), console
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><body></body>")
    shot = tmp_path / "blank.png"
    chromium(blank, tmp_path / "profile-blank", f"--screenshot={shot}")
    assert png_stats(shot)[2] < 0.005
