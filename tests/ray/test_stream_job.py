"""`ray job submit` of `python -m perkunas_ray.train --num-workers 2` to a local head: SUCCEEDED and a durable
checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from perkunas_ray.checkpoint.format import list_checkpoints, verify_checkpoint
from perkunas_ray.config import to_dict
from tests.ray.process_tree import kill_tree
from tests.stream_helpers import small_config, small_data_dir

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_head(env: dict[str, str], num_cpus: int = 2) -> Iterator[tuple[str, dict[str, str]]]:
    """A head node on loopback with its own temp dir (so no other ray.init on this machine finds it), started in
    the repo (a job's default working dir) with `env`.

    It is stopped by killing exactly the processes it started: `ray stop` would also stop every other
    Ray instance of this user on a shared machine.
    """
    port, dash = free_port(), free_port()
    temp_dir = Path("/tmp") / f"pk-job-{os.getpid()}"
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    if "RAY_AUTH_MODE" not in env:
        env["RAY_AUTH_MODE"] = "token"  # Ray 2.5x+ heads require a token: this head's own, for the job CLI too
        env.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    proc = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--num-cpus", str(num_cpus),
                             "--node-ip-address", "127.0.0.1", "--include-dashboard", "true",
                             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                             "--temp-dir", str(temp_dir), "--block"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # 401 with token authentication: the dashboard is up
            except OSError:
                assert proc.poll() is None, "ray start --head exited"
                assert time.time() < deadline, "the dashboard did not come up"
                time.sleep(1)
        yield url, env
    finally:
        kill_tree(proc.pid)
        proc.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def head():
    with start_head(dict(os.environ)) as started:
        yield started


def test_ray_job_submit_trains_and_flushes(tmp_path, head):
    url, env = head
    data = small_data_dir(tmp_path / "data")
    cfg = small_config(data, tmp_path / "run", max_steps=4, save_every=2, checkpoint__durable_flush_every=2)
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(to_dict(cfg)))
    job_id = f"perkunas-test-{os.getpid()}"
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", url, "--submission-id", job_id, "--working-dir", ".", "--",
         "python", "-m", "perkunas_ray.train", "--config", str(config_file), "--num-workers", "2",
         "--compute-threads", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    status = subprocess.run([RAY, "job", "status", "--address", url, job_id], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    # `ray job status` prints "Job '<id>' succeeded" for JobStatus.SUCCEEDED
    assert "succeeded" in (status.stdout + status.stderr).lower(), submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "failed" not in status.stdout.lower()
    found = list_checkpoints(tmp_path / "run")
    assert found and found[-1][0] == 4
    verify_checkpoint(found[-1][1])
    assert "done: step 4" in submit.stdout
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert {r["worker"] for r in log if r["event"] == "worker"} == {0, 1}


def test_job_from_a_shell_without_the_venv_finds_the_project_interpreter(tmp_path):
    """Ray started from a shell where `python` is an interpreter without torch (the venv not activated): the job's
    `python -m perkunas_ray.train` hands over to the project's venv and runs, rather than failing on an import."""
    if Path(sys.prefix) != ROOT / ".venv":
        pytest.skip("the tests do not run in the repo's .venv, which the hand-over looks for")
    bare = tmp_path / "bare"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{bare / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    with start_head(env, num_cpus=1) as (url, head_env):
        submit = subprocess.run([RAY, "job", "submit", "--address", url, "--", "python", "-m", "perkunas_ray.train",
                                 "--help"], cwd=tmp_path, env=head_env, capture_output=True, text=True, timeout=300)
    out = submit.stdout + submit.stderr
    assert f"{bare / 'bin' / 'python'} has no torch" in out, out[-3000:]
    assert "usage: python -m perkunas_ray.train" in out, out[-3000:]
    assert "succeeded" in out.lower(), out[-3000:]
