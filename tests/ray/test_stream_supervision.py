"""With restarts off (ray.max_failures 0), an actor dying mid-run ends the run with a clear error naming it and the
durable checkpoint to resume from, which stays intact."""

from __future__ import annotations

import threading
import time

import pytest
import ray

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.format import latest_checkpoint, verify_checkpoint
from perkunas_ray.stream.build import run_name
from perkunas_ray.stream.session import resolve_paths
from tests.stream_helpers import small_config, small_data_dir, train_with_ray

pytestmark = pytest.mark.ray


def test_store_death_without_restarts_is_reported_and_durable_checkpoint_survives(tmp_path):
    data = small_data_dir(tmp_path / "data")
    cfg = small_config(data, tmp_path / "run", max_steps=200, save_every=2, checkpoint__durable_flush_every=2,
                       ray__max_failures=0, ray__compute_threads=1)
    ray.init(num_cpus=2, include_dashboard=False, namespace="perkunas")
    try:
        outcome: dict = {}

        def train() -> None:
            try:
                train_with_ray(cfg)
            except BaseException as exc:  # what the driver raised
                outcome["error"] = exc

        thread = threading.Thread(target=train, daemon=True)
        thread.start()
        durable = DurableDir(tmp_path / "run")
        deadline = time.time() + 240
        while time.time() < deadline and not [s for s in durable.list_checkpoints() if s >= 2]:
            time.sleep(0.1)
        name = run_name(resolve_paths(cfg).durable)
        ray.kill(ray.get_actor(f"perkunas:{name}:shard_store", namespace="perkunas"))
        thread.join(timeout=120)
        assert not thread.is_alive()
    finally:
        ray.shutdown()
    error = outcome.get("error")
    assert error is not None and type(error).__name__ == "ActorFailure", repr(error)
    assert "shard_store" in str(error) and "intact" in str(error) and "--train" in str(error), str(error)
    verify_checkpoint(latest_checkpoint(tmp_path / "run"))
