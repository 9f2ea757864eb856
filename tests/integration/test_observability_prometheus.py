"""Every dashboard query returns data from a real Prometheus scraping a real Ray cluster with our config.

The metrics come from a short real training (`python -m perkunas_ray.train` on Ray actors, joined to the
test's cluster through RAY_ADDRESS) and real requests to the kvserve app on Ray Serve.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from perkunas_ray.cli import main as cli_main
from perkunas_ray.stream.build import run_name
from perkunas_ray.telemetry.dashboard_panels import all_dashboards
from perkunas_ray.telemetry.report import build_charts, load_run
from perkunas_ray.telemetry.schema import TRAIN_LOG, read_log
from tests.dashboard_helpers import expand_variables, panel_queries

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
SCRAPE_INTERVAL = "2s"
QUERY_DEADLINE_S = 150
TRAIN_RUN = "obs-run"  # the run dir's name; the `run` tag of the training gauges is its run_name


class RaySession(NamedTuple):
    session_dir: Path
    gcs_address: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


# ---- metric sources ------------------------------------------------------------------------------------
PROMPT = "Once upon a time there was a little girl named Lily. She liked to play with her toys in the big park."
TOKEN = "obs-token"


def post(url: str, body: dict, token: str = TOKEN) -> int:
    req = urllib.request.Request(url, json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def serving_traffic(base: str) -> list[int]:
    """Concurrent completions that share a prefix (prefix-cache hits) and overflow 10 KV blocks
    (preemptions), a streamed chat (inter-token latency) and one unauthorized request (a 401)."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda i: post(f"{base}/v1/completions", {
            "model": "tiny", "prompt": f"{PROMPT} {i}", "max_tokens": 80, "temperature": 0}), range(6)))
    # Long enough to arrive in several messages: the engine steps ahead of the event loop, and a short reply from
    # this tiny model can reach the client as one message (no inter-token latency to observe).
    statuses.append(post(f"{base}/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": "A dog."}], "max_tokens": 120, "ignore_eos": True,
        "stream": True}))
    statuses.append(post(f"{base}/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1}, "wrong"))
    return statuses


# ---- Ray and Prometheus --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    import ray

    from deployments import launch

    if ray.is_initialized():  # left over by an earlier test module: we need our own, with the dashboard
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    # A private temp dir: our own service-discovery file even when other Ray clusters run on the machine.
    temp_dir = tempfile.mkdtemp(prefix="pkobs-", dir="/tmp")
    # As `perkunas serve` starts its own Ray: training runs beside Serve here, and with Ray's defaults the proxy
    # started too slowly for Serve's readiness check (CI, stop 35).
    with launch.environment(launch.local_ray_environment()):
        ctx = ray.init(num_cpus=2, include_dashboard=True, _metrics_export_port=free_port(), _temp_dir=temp_dir,
                       log_to_driver=False)
    yield RaySession(Path(ctx.address_info["session_dir"]), ctx.address_info["gcs_address"])
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def training(ray_session, tmp_path_factory):
    """The streaming runtime training a tiny model on the bundled corpus, with guarded replay, checkpoints
    and durable flushes every few steps; it runs (set for far more steps than needed) until the tests end."""
    work = tmp_path_factory.mktemp("training")
    assert cli_main(["prepare", "--output-dir", str(work / "data"), "--seq-len", "64", "--vocab-size", "2048",
                     "--progress", "off"]) == 0
    run_dir = work / TRAIN_RUN
    cmd = [sys.executable, "-m", "perkunas_ray.train", "--init-shards", "--train", "--config", "tiny",
           "--data-dir", str(work / "data"), "--run-dir", str(run_dir), "--vocab-size", "2048", "--seq-len", "64",
           "--max-seq-len", "64", "--micro-batch-size", "4", "--gradient-accumulation-steps", "1",
           "--max-steps", "5000", "--validate-every", "5", "--max-validation-batches", "2", "--save-every", "5",
           "--durable-flush-every", "5", "--guarded-step-replay", "--quiet"]
    log = open(work / "train.out", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, env={**os.environ, "RAY_ADDRESS": ray_session.gcs_address}, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while not any(r.get("event") == "validation" and r.get("step", 0) > 0 for r in _log_records(run_dir)):
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail(f"training did not get going:\n{(work / 'train.out').read_text()[-3000:]}")
            time.sleep(1)
        yield run_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _log_records(run_dir: Path) -> list[dict]:
    path = run_dir / TRAIN_LOG
    return read_log(path) if path.is_file() else []


@pytest.fixture(scope="module")
def serving(ray_session, tmp_path_factory):
    """The real kvserve app (ingress, KV-aware router, one native engine on a tiny random model) on Serve."""
    from ray import serve

    from deployments import launch
    from perkunas_ray.kvserve.registry import load_registry
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    work = tmp_path_factory.mktemp("serving")
    run = make_tiny_run_dir(work / "tiny")
    registry = work / "registry.yaml"
    registry.write_text(f"models:\n  tiny:\n    source: {run}\n    num_replicas: 1\n    num_cpus: 0\n"
                        "    kv_policy: {num_blocks: 10, block_size: 16, max_num_seqs: 8}\n"
                        "ingress: {mode: separate}\n")  # the router's panels need the router
    port = free_port()
    launch.start_local("127.0.0.1", port)
    try:
        launch.deploy(load_registry(registry), api_tokens=f"test:{TOKEN}")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def prometheus(ray_session, tmp_path_factory):
    if PROMETHEUS is None:
        pytest.skip("the `prometheus` binary is not installed (Debian: apt-get install -y prometheus)")
    sd_file = ray_session.session_dir / "prom_metrics_service_discovery.json"
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


def wait_for_all_panels(base: str) -> list[str]:
    deadline = time.time() + QUERY_DEADLINE_S
    while True:
        empty = empty_panels(base)
        if not empty or time.time() > deadline:
            return empty
        time.sleep(2)


def wait_for_series(base: str, expr: str, timeout_s: float = 60) -> list[dict]:
    deadline = time.time() + timeout_s
    while not (result := query(base, expr)) and time.time() < deadline:
        time.sleep(1)
    return result


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


def test_every_dashboard_query_returns_series(prometheus, training, serving):
    statuses = serving_traffic(serving)
    assert statuses.count(200) == 7 and statuses[-1] == 401, statuses
    empty = wait_for_all_panels(prometheus)
    assert not empty, "dashboard panels whose query returned no series:\n" + "\n".join(empty)
    # Names as Ray exports them: the ray_ prefix, a counter's _total kept once, histogram _bucket series.
    # (A series recorded a moment after the others may come one export interval later: wait for it.)
    tag = run_name(str(training))  # the run dir's name and a digest of its path, as its actors are named
    for expr in (f'ray_perkunas_train_step{{run="{tag}"}} > 0', "ray_perkunas_train_val_loss",
                 "ray_perkunas_serve_requests_total",
                 "ray_perkunas_serve_ttft_seconds_bucket", 'ray_perkunas_serve_requests_total{status="401"}',
                 "sum(ray_perkunas_serve_preemptions_total) > 0"):
        assert wait_for_series(prometheus, expr), f"no series for {expr}"
    assert not query(prometheus, "ray_perkunas_serve_requests_total_total")


def test_report_of_the_streaming_run_has_every_chart(training):
    """The streaming runtime logs every step field, so the HTML report leaves no chart out."""
    charts, omitted = build_charts(load_run(training))
    assert omitted == []
    assert {"guard", "residency", "prefetch", "flush", "timing", "memory"} <= {c.chart_id for c in charts}


def test_template_variables_have_values(prometheus, training, serving):
    """Each dashboard variable's label_values(...) query finds at least one value (as Grafana would)."""
    for file_name, dashboard in all_dashboards().items():
        for var in dashboard["templating"]["list"]:
            if var["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
            assert match, var["query"]
            selector, label = match.groups()
            result = query(prometheus, f"count by ({label}) ({expand_variables(selector)})")
            assert [r["metric"].get(label) for r in result if r["metric"].get(label)], \
                f"{file_name}: variable {var['name']} has no values"


def test_a_missing_metric_fails_its_panel(prometheus):
    """The check above can fail: a query on a name nobody emits comes back empty."""
    assert query(prometheus, 'ray_perkunas_train_loss{run="no-such-run"}') == []
    assert query(prometheus, "ray_perkunas_train_not_a_metric") == []


def test_install_ray_puts_ours_next_to_rays_dashboards(ray_session):
    """Ray's Grafana provisioning (metrics/grafana/provisioning/dashboards/default.yml) loads this folder."""
    target = ray_session.session_dir / "metrics" / "grafana" / "dashboards"
    assert (target / "default_grafana_dashboard.json").is_file(), "Ray wrote no Grafana dashboards here"
    provider = (target.parent / "provisioning" / "dashboards" / "default.yml").read_text()
    assert str(target) in provider
    assert cli_main(["dashboards", "install-ray", "--session-dir", str(ray_session.session_dir)]) == 0
    for name, dashboard in all_dashboards().items():
        assert json.loads((target / f"perkunas_{name}").read_text()) == dashboard
    rays = json.loads((target / "default_grafana_dashboard.json").read_text())
    assert "datasource" in {v["name"] for v in rays["templating"]["list"]}  # the variable ours use too
