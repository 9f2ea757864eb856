"""The committed Grafana dashboards equal the generator's output and cover every metric name, with units."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from perkunas_ray.cli import main
from perkunas_ray.telemetry import metric_names as mn
from perkunas_ray.telemetry.dashboard_panels import all_dashboards
from perkunas_ray.telemetry.dashboards import (
    DEFAULT_SD_FILE,
    prometheus_config,
    stale_files,
    write_dashboards,
)
from tests.dashboard_helpers import DEFAULT_VARIABLE_VALUES, expand_variables, panel_queries

pytestmark = pytest.mark.unit

DASHBOARDS_DIR = Path(__file__).resolve().parents[2] / "dashboards"
ALL_EXPRS = [expr for d in all_dashboards().values() for _, expr in panel_queries(d)]


def panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_committed_files_equal_the_generator():
    stale = stale_files(DASHBOARDS_DIR)
    assert not stale, f"{stale} differ from the generator: run `perkunas dashboards generate`"


def test_stale_check_notices_a_hand_edit(tmp_path):
    write_dashboards(tmp_path)
    assert stale_files(tmp_path) == []
    path = tmp_path / "training.json"
    path.write_text(path.read_text().replace("ray_perkunas_train_loss", "ray_perkunas_train_losses"))
    assert stale_files(tmp_path) == ["training.json"]
    assert main(["dashboards", "generate", "--out-dir", str(tmp_path), "--check"]) == 1
    assert main(["dashboards", "generate", "--out-dir", str(tmp_path)]) == 0
    assert main(["dashboards", "generate", "--out-dir", str(tmp_path), "--check"]) == 0


@pytest.mark.parametrize("name", mn.ALL_NAMES)
def test_every_metric_name_is_on_some_panel(name):
    exported = re.compile(rf"\b{re.escape(mn.RAY_PREFIX + name)}(_bucket)?\b")
    assert any(exported.search(expr) for expr in ALL_EXPRS), f"no panel queries {mn.RAY_PREFIX}{name}"


def test_queries_use_only_exported_perkunas_names():
    known = {mn.RAY_PREFIX + n for n in mn.ALL_NAMES}
    for expr in ALL_EXPRS:
        for used in re.findall(r"\bray_perkunas_\w+", expr):
            assert used.removesuffix("_bucket") in known, f"{used} in {expr!r} is not in metric_names.py"


def test_only_known_template_variables():
    for expr in ALL_EXPRS:
        assert set(re.findall(r"\$\w+", expr)) <= set(DEFAULT_VARIABLE_VALUES), expr
        assert "$" not in expand_variables(expr)


@pytest.mark.parametrize("file_name", ["training.json", "serving.json"])
def test_dashboard_shape(file_name):
    d = all_dashboards()[file_name]
    assert d["schemaVersion"] >= 36 and d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert ("run" if file_name == "training.json" else "model") in variables
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in panels(d)]
    assert len(titles) == len(set(titles))
    for p in panels(d):
        assert p["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
        assert p["fieldConfig"]["defaults"]["unit"], p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["targets"] and all(t["expr"] for t in p["targets"])


def test_units_match_the_signal():
    for d in all_dashboards().values():
        for p in panels(d):
            unit, exprs = p["fieldConfig"]["defaults"]["unit"], " ".join(t["expr"] for t in p["targets"])
            if "_bytes" in exprs:
                assert unit == "bytes", p["title"]
            if re.search(r"_seconds(_bucket)?\b", exprs) and "rate(" not in exprs.replace("_bucket", ""):
                assert unit == "s", p["title"]
            if "tokens_per_second" in exprs or "tokens_total" in exprs:
                assert "tok/s" in unit, p["title"]
    units = {p["title"]: p["fieldConfig"]["defaults"]["unit"] for d in all_dashboards().values() for p in panels(d)}
    assert units["Step time breakdown"] == "s"
    assert units["Time to first token"] == "s"
    assert units["Prefix cache hit rate"] == "percentunit"
    assert units["Memory"] == "bytes"


def test_histogram_panels_show_quantiles():
    serving = all_dashboards()["serving.json"]
    ttft = [p for p in panels(serving) if p["title"] == "Time to first token"][0]
    exprs = [t["expr"] for t in ttft["targets"]]
    assert [e.split(",")[0] for e in exprs] == [f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")]
    assert all("ray_perkunas_serve_ttft_seconds_bucket" in e and "by (le, model)" in e for e in exprs)


def test_prometheus_config_scrapes_rays_service_discovery_file():
    cfg = yaml.safe_load(prometheus_config())
    assert cfg["global"]["scrape_interval"] == "5s"
    job = cfg["scrape_configs"][0]
    assert job["job_name"] == "ray"
    assert job["file_sd_configs"][0]["files"] == [DEFAULT_SD_FILE]
    assert DEFAULT_SD_FILE == "/tmp/ray/prom_metrics_service_discovery.json"
    assert yaml.safe_load((DASHBOARDS_DIR / "prometheus.yml").read_text()) == cfg


def test_prometheus_config_cli(tmp_path, capsys):
    assert main(["dashboards", "prometheus-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(prometheus_config())
    out = tmp_path / "p.yml"
    sd = tmp_path / "ray dir" / "prom_metrics_service_discovery.json"
    assert main(["dashboards", "prometheus-config", "--out", str(out), "--sd-file", str(sd),
                 "--scrape-interval", "2s"]) == 0
    cfg = yaml.safe_load(out.read_text())
    assert cfg["scrape_configs"][0]["file_sd_configs"][0]["files"] == [str(sd)]
    assert cfg["global"]["scrape_interval"] == "2s" and cfg["global"]["scrape_timeout"] == "2s"
