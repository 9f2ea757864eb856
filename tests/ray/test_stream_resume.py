"""SIGKILL `python -m perkunas_ray.train` mid-run, resume from the durable dir: same final parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.format import latest_checkpoint, load_model_state, read_state
from perkunas_ray.config import to_dict
from tests.ray.process_tree import kill_tree
from tests.stream_helpers import small_config, small_data_dir, train_in_process

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]


def train_cmd(config_file: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "perkunas_ray.train", "--config", str(config_file), "--ray-num-cpus", "2",
            "--compute-threads", "1", "--quiet", *extra]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out["PYTHONPATH"] = str(ROOT)
    return out


def kill_training(proc: subprocess.Popen) -> None:
    """SIGKILL the training process and everything it started (its local Ray), by pid."""
    kill_tree(proc.pid)
    proc.wait(timeout=30)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    data = small_data_dir(tmp_path / "data")
    settings = dict(max_steps=12, save_every=3, checkpoint__durable_flush_every=3, validate_every=0,
                    checkpoint__keep_last_checkpoints=2, shuffle_train=True)
    cfg = small_config(data, tmp_path / "killed", **settings)
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(to_dict(cfg)))

    proc = subprocess.Popen(train_cmd(config_file, "--init-shards", "--train"), cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    durable = DurableDir(tmp_path / "killed")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if durable.exists() and [s for s in durable.list_checkpoints() if s >= 3]:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"training ended before it could be killed:\n{proc.stdout.read().decode()}"
    finally:
        kill_training(proc)
    killed_at = max(durable.list_checkpoints())
    assert 3 <= killed_at < 12, killed_at

    resumed = subprocess.run(train_cmd(config_file, "--train"), cwd=tmp_path, env=env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    final = latest_checkpoint(tmp_path / "killed")
    assert read_state(final)["step"] == 12

    straight = train_in_process(small_config(data, tmp_path / "straight", **settings))
    assert straight.step == 12
    want = load_model_state(latest_checkpoint(tmp_path / "straight"))
    got = load_model_state(final)
    for name in want:
        assert float((want[name] - got[name]).abs().max()) <= 1e-6 * float(want[name].abs().max()), name
    assert read_state(final)["cursor"] == read_state(latest_checkpoint(tmp_path / "straight"))["cursor"]
    steps = [json.loads(x) for x in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["event"] == "step"] == list(range(1, 13))
