"""Every dashboard query returns data from a real Prometheus scraping a real Ray cluster with our config."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from perkunas_ray.cli import main as cli_main
from perkunas_ray.telemetry import metric_names as mn
from perkunas_ray.telemetry.dashboard_panels import all_dashboards, expand_variables, panel_queries

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
SCRAPE_INTERVAL = "2s"
QUERY_DEADLINE_S = 150


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


# ---- metric sources ------------------------------------------------------------------------------------
def start_emitter():
    """A Ray actor that records every metric in metric_names.py with the tags the real emitters use."""
    import ray
    from ray.util import metrics

    @ray.remote(num_cpus=0)
    class Emitter:
        def __init__(self) -> None:
            self.gauges = {f: metrics.Gauge(n, "test", tag_keys=("run",)) for f, n in mn.TRAIN_GAUGES.items()}
            self.val = metrics.Gauge(mn.TRAIN_VAL_LOSS, "test", tag_keys=("run",))
            self.requests = metrics.Counter(mn.SERVE_REQUESTS, "test", tag_keys=("route", "status"))
            self.hists = [metrics.Histogram(n, "test", [0.01, 0.1, 1.0], tag_keys=("model",))
                          for n in (mn.SERVE_TTFT, mn.SERVE_ITL, mn.SERVE_E2E)]
            self.model_counters = [metrics.Counter(n, "test", tag_keys=("model",)) for n in (
                mn.SERVE_PROMPT_TOKENS, mn.SERVE_GENERATION_TOKENS, mn.SERVE_PREFIX_QUERIES, mn.SERVE_PREFIX_HITS,
                mn.SERVE_PREEMPTIONS)]
            self.replica_gauges = [metrics.Gauge(n, "test", tag_keys=("model", "replica")) for n in (
                mn.SERVE_KV_BLOCKS_USED, mn.SERVE_KV_BLOCKS_FREE, mn.SERVE_QUEUE_LENGTH)]
            self.router = metrics.Counter(mn.SERVE_ROUTER_DECISIONS, "test", tag_keys=("decision", "deployment"))
            self.i = 0

        def emit(self) -> int:
            self.i += 1
            run, model = {"run": "obs-test"}, {"model": "tiny"}
            for f, g in self.gauges.items():
                g.set(float(self.i) if f in ("step", "tokens_seen") else 1.0 / self.i + 0.5, tags=run)
            self.val.set(2.0, tags=run)
            self.requests.inc(1, tags={"route": "/v1/completions", "status": "200"})
            for h in self.hists:
                h.observe(0.05, tags=model)
            for c in self.model_counters:
                c.inc(3, tags=model)
            for g in self.replica_gauges:
                g.set(4.0, tags={**model, "replica": "0"})
            self.router.inc(1, tags={"decision": "prefix_match", "deployment": "engine"})
            return self.i

    return Emitter.remote()


# ---- Ray and Prometheus --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    import ray

    if ray.is_initialized():
        pytest.skip("another Ray instance is already initialized in this process")
    # A private temp dir: our own service-discovery file even when other Ray clusters run on the machine.
    temp_dir = tempfile.mkdtemp(prefix="pkobs-", dir="/tmp")
    ctx = ray.init(num_cpus=2, include_dashboard=True, _metrics_export_port=free_port(), _temp_dir=temp_dir,
                   log_to_driver=False)
    session_dir = Path(ctx.address_info["session_dir"])
    yield session_dir
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def prometheus(ray_session, tmp_path_factory):
    if PROMETHEUS is None:
        pytest.skip("the `prometheus` binary is not installed (Debian: apt-get install -y prometheus)")
    sd_file = ray_session / "prom_metrics_service_discovery.json"
    deadline = time.time() + 60
    while not sd_file.is_file() and time.time() < deadline:
        time.sleep(0.5)
    assert sd_file.is_file(), f"Ray wrote no service-discovery file at {sd_file}"
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    assert cli_main(["dashboards", "prometheus-config", "--out", str(config), "--sd-file", str(sd_file),
                     "--scrape-interval", SCRAPE_INTERVAL]) == 0
    port = free_port()
    log = open(work / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
                             f"--storage.tsdb.path={work / 'data'}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if http_json(f"{base}/api/v1/query?query=vector(1)")["status"] == "success":
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail(f"prometheus did not start:\n{(work / 'prometheus.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def query(base: str, expr: str) -> list[dict]:
    data = http_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert data["status"] == "success", f"{expr}: {data}"
    return data["data"]["result"]


def empty_panels(base: str) -> list[str]:
    """'dashboard / panel: expr' for every query that returns no series."""
    empty = []
    for file_name, dashboard in all_dashboards().items():
        for title, expr in panel_queries(dashboard):
            try:
                result = query(base, expand_variables(expr))
            except urllib.error.HTTPError as exc:  # a PromQL syntax error is a 400 with the reason
                pytest.fail(f"{file_name} / {title}: Prometheus rejected {expr!r}: {exc.read().decode()}")
            if not result:
                empty.append(f"{file_name} / {title}: {expr}")
    return empty


def wait_for_all_panels(base: str, keep_emitting=None) -> list[str]:
    deadline = time.time() + QUERY_DEADLINE_S
    while True:
        if keep_emitting is not None:
            keep_emitting()
        empty = empty_panels(base)
        if not empty or time.time() > deadline:
            return empty
        time.sleep(2)


def test_targets_come_from_rays_service_discovery_file(prometheus):
    deadline = time.time() + 60
    while time.time() < deadline:
        active = http_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
        if any(t["health"] == "up" for t in active):
            break
        time.sleep(1)
    assert active, "Prometheus discovered no targets from Ray's service-discovery file"
    assert all(t["labels"]["job"] == "ray" for t in active)
    assert any(t["health"] == "up" for t in active), active


def test_every_dashboard_query_returns_series(prometheus):
    import ray

    emitter = start_emitter()
    ray.get(emitter.emit.remote())
    # Ray exports what was recorded since the last export; keep recording so counters move (rate() > 0).
    empty = wait_for_all_panels(prometheus, keep_emitting=lambda: ray.get(emitter.emit.remote()))
    assert not empty, "dashboard panels whose query returned no series:\n" + "\n".join(empty)
    # Names as Ray exports them: the ray_ prefix, a counter's _total kept once, histogram _bucket series.
    assert query(prometheus, "ray_perkunas_train_loss"), "no ray_perkunas_train_loss"
    assert query(prometheus, "ray_perkunas_serve_requests_total"), "no ray_perkunas_serve_requests_total"
    assert not query(prometheus, "ray_perkunas_serve_requests_total_total")
    assert query(prometheus, "ray_perkunas_serve_ttft_seconds_bucket")


def test_a_missing_metric_fails_its_panel(prometheus):
    """The check above can fail: a query on a name nobody emits comes back empty."""
    assert query(prometheus, 'ray_perkunas_train_loss{run="no-such-run"}') == []
    assert query(prometheus, "ray_perkunas_train_not_a_metric") == []
