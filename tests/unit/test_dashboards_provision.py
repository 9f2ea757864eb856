"""`perkunas dashboards provision` against a fake Grafana HTTP API, and `install-ray` into a session folder."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from perkunas_ray.cli import main
from perkunas_ray.errors import PerkunasError
from perkunas_ray.telemetry import dashboards as dash
from perkunas_ray.telemetry.dashboard_panels import SERVING_UID, TRAINING_UID, all_dashboards

pytestmark = pytest.mark.unit


class FakeGrafana(BaseHTTPRequestHandler):
    """Just enough of Grafana's HTTP API: folders and dashboards/db, with a bearer token."""

    token = "glsa_test"
    folders: list[dict] = []
    calls: list[tuple[str, str, dict | None, str | None]] = []

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        auth = self.headers.get("Authorization")
        type(self).calls.append((method, self.path, body, auth))
        if auth != f"Bearer {self.token}":
            return self._reply(401, {"message": "Unauthorized"})
        if method == "GET" and self.path.startswith("/api/folders"):
            return self._reply(200, self.folders)
        if method == "POST" and self.path == "/api/folders":
            folder = {"id": len(self.folders) + 1, "uid": f"f{len(self.folders) + 1}", "title": body["title"]}
            self.folders.append(folder)
            return self._reply(200, folder)
        if method == "POST" and self.path == "/api/dashboards/db":
            uid = body["dashboard"]["uid"]
            return self._reply(200, {"status": "success", "uid": uid, "url": f"/d/{uid}/x", "version": 1})
        return self._reply(404, {"message": "not found"})

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def grafana():
    FakeGrafana.folders, FakeGrafana.calls = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def dashboard_posts() -> list[dict]:
    return [body for method, path, body, _ in FakeGrafana.calls if method == "POST" and path == "/api/dashboards/db"]


def test_provision_uploads_both_into_a_new_folder(grafana, capsys):
    assert main(["dashboards", "provision", "--url", grafana, "--token", "glsa_test", "--folder", "LLM"]) == 0
    posts = dashboard_posts()
    assert [p["dashboard"]["uid"] for p in posts] == [TRAINING_UID, SERVING_UID]
    assert all(p["overwrite"] is True and p["folderUid"] == "f1" for p in posts)
    assert posts[0]["dashboard"] == all_dashboards()["training.json"]
    assert FakeGrafana.folders == [{"id": 1, "uid": "f1", "title": "LLM"}]
    assert all(auth == "Bearer glsa_test" for *_, auth in FakeGrafana.calls)
    out = capsys.readouterr().out
    assert f"/d/{TRAINING_UID}/x" in out and f"/d/{SERVING_UID}/x" in out


def test_provision_reuses_an_existing_folder_and_can_skip_it(grafana):
    FakeGrafana.folders = [{"id": 7, "uid": "existing", "title": "Perkunas"}]
    dash.provision_grafana(grafana, "glsa_test")
    assert [p["folderUid"] for p in dashboard_posts()] == ["existing", "existing"]
    assert len(FakeGrafana.folders) == 1
    FakeGrafana.calls = []
    dash.provision_grafana(grafana, "glsa_test", folder=None)
    assert all("folderUid" not in p for p in dashboard_posts())


def test_provision_reports_a_bad_token_and_an_unreachable_server(grafana, capsys):
    with pytest.raises(PerkunasError, match="Grafana at"):
        dash.provision_grafana(grafana, "wrong")
    assert main(["dashboards", "provision", "--url", "http://127.0.0.1:9", "--token", "x"]) == 2
    assert "error: Grafana at http://127.0.0.1:9" in capsys.readouterr().err


def test_install_ray_writes_next_to_rays_dashboards(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(dash.RAY_GRAFANA_DASHBOARD_DIR_ENV, raising=False)
    monkeypatch.delenv(dash.RAY_METRICS_ROOT_ENV, raising=False)
    session = tmp_path / "session_2026_x"
    target = session / "metrics" / "grafana" / "dashboards"
    target.mkdir(parents=True)
    (target / "default_grafana_dashboard.json").write_text("{}")
    (tmp_path / "session_latest").symlink_to(session)
    assert main(["dashboards", "install-ray", "--ray-temp-dir", str(tmp_path)]) == 0
    names = sorted(p.name for p in target.iterdir())
    assert names == ["default_grafana_dashboard.json", "perkunas_serving.json", "perkunas_training.json"]
    assert json.loads((target / "perkunas_training.json").read_text()) == all_dashboards()["training.json"]
    assert "installed" in capsys.readouterr().out


def test_install_ray_follows_rays_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv(dash.RAY_METRICS_ROOT_ENV, str(tmp_path / "root"))
    assert dash.ray_grafana_dashboard_dir() == tmp_path / "root" / "grafana" / "dashboards"
    monkeypatch.setenv(dash.RAY_GRAFANA_DASHBOARD_DIR_ENV, str(tmp_path / "out"))
    assert dash.ray_grafana_dashboard_dir() == tmp_path / "out"


def test_install_ray_without_a_session_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(dash.RAY_GRAFANA_DASHBOARD_DIR_ENV, raising=False)
    monkeypatch.delenv(dash.RAY_METRICS_ROOT_ENV, raising=False)
    assert main(["dashboards", "install-ray", "--ray-temp-dir", str(tmp_path)]) == 2
    assert "start Ray with its dashboard first" in capsys.readouterr().err
