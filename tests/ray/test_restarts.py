"""SIGKILL a worker or a helper actor mid-run: the run restarts itself from the newest durable checkpoint and ends
with the parameters of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.format import latest_checkpoint, load_model_state, read_state
from perkunas_ray.stream.actor_options import actor_name
from perkunas_ray.stream.build import run_name
from perkunas_ray.stream.session import resolve_paths
from perkunas_ray.telemetry.schema import read_log
from tests.stream_helpers import (
    max_relative_difference,
    small_config,
    small_data_dir,
    train_in_process,
    train_with_ray,
)

pytestmark = pytest.mark.ray

STEPS = 40
SETTINGS = dict(max_steps=STEPS, save_every=2, checkpoint__durable_flush_every=2, gradient_accumulation_steps=1,
                ray__compute_threads=1, ray__max_failures=3)


class Training:
    """A Ray run in a thread of this test, with the means to wait for its progress and kill its processes."""

    def __init__(self, cfg) -> None:
        self.cfg, self.run_dir = cfg, Path(cfg.checkpoint.run_dir)
        self.outcome: dict = {}
        self.thread = threading.Thread(target=self._train, daemon=True)
        self.thread.start()

    def _train(self) -> None:
        try:
            self.outcome["result"] = train_with_ray(self.cfg)
        except BaseException as exc:
            self.outcome["error"] = exc

    def records(self, event: str) -> list[dict]:
        log = self.run_dir / "train_log.jsonl"
        return [r for r in read_log(log) if r["event"] == event] if log.is_file() else []

    def wait_for(self, what: str, ready, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while not ready():
            assert self.thread.is_alive(), f"the run ended before {what}: {self.outcome}"
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def wait_for_durable_step(self, step: int) -> None:
        durable = DurableDir(self.run_dir)
        self.wait_for(f"a durable checkpoint at step >= {step}",
                      lambda: any(s >= step for s in durable.list_checkpoints()))

    def worker_pid(self, rank: int) -> int:
        return int((self.records("restart") or self.records("start"))[-1]["worker_pids"][rank])

    def actor_pid(self, role: str) -> int:
        name = actor_name(run_name(resolve_paths(self.cfg).durable), role)
        return int(ray.get(ray.get_actor(name, namespace="perkunas").ping.remote(), timeout=30))

    def finish(self):
        self.thread.join(timeout=300)
        assert not self.thread.is_alive(), "the run did not finish"
        assert "error" not in self.outcome, repr(self.outcome.get("error"))
        return self.outcome["result"]


def assert_equals_uninterrupted(tmp_path: Path, data: Path, killed: Path, accumulation: int) -> float:
    """The killed run's final parameters against an uninterrupted in-process run (one worker, the same global
    batch); returns the max relative difference."""
    straight = train_in_process(small_config(data, tmp_path / "straight", **{
        **SETTINGS, "gradient_accumulation_steps": accumulation}))
    assert straight.step == STEPS
    final = latest_checkpoint(killed)
    assert read_state(final)["step"] == STEPS
    assert read_state(final)["cursor"] == read_state(latest_checkpoint(tmp_path / "straight"))["cursor"]
    diff = max_relative_difference(load_model_state(latest_checkpoint(tmp_path / "straight")),
                                   load_model_state(final))
    assert diff <= 1e-6, diff
    steps = [r["step"] for r in read_log(killed / "train_log.jsonl") if r["event"] == "step"]
    assert steps == list(range(1, STEPS + 1))  # the log reads as one run
    return diff


def test_a_killed_worker_of_two_restarts_the_group(ray_instance, tmp_path, one_torch_thread):
    data = small_data_dir(tmp_path / "data")
    run = Training(small_config(data, tmp_path / "run", ray__num_workers=2, **SETTINGS))
    run.wait_for_durable_step(4)
    os.kill(run.worker_pid(1), signal.SIGKILL)
    result = run.finish()
    assert result.step == STEPS
    restarts = run.records("restart")
    assert len(restarts) == 1 and restarts[0]["attempt"] == 1 and restarts[0]["step"] >= 4
    print("max relative difference:", assert_equals_uninterrupted(tmp_path, data, tmp_path / "run", 2))


def test_killed_store_then_killed_worker_each_restart_the_run(ray_instance, tmp_path, one_torch_thread):
    data = small_data_dir(tmp_path / "data")
    run = Training(small_config(data, tmp_path / "run", **SETTINGS))
    run.wait_for_durable_step(4)
    os.kill(run.actor_pid("shard_store"), signal.SIGKILL)
    run.wait_for("the first restart", lambda: run.records("restart"))
    resumed_at = run.records("restart")[0]["step"]
    run.wait_for_durable_step(resumed_at + 4)
    os.kill(run.worker_pid(0), signal.SIGKILL)
    result = run.finish()
    assert result.step == STEPS
    assert [r["attempt"] for r in run.records("restart")] == [1, 2]
    print("max relative difference:", assert_equals_uninterrupted(tmp_path, data, tmp_path / "run", 1))
