"""Unit tests of the streaming runtime's parts: clipping, guard policy, loss scale, writer, staging, durable dir,
actor options."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.format import publish_manifest, save_tensors, write_json_atomic
from perkunas_ray.config import RunConfig, StreamConfig
from perkunas_ray.errors import ConfigError
from perkunas_ray.stream.actor_options import actor_options, worker_resources
from perkunas_ray.stream.clipping import clip_coefficient, total_norm
from perkunas_ray.stream.device_copy import DeviceCopier, GradDrain
from perkunas_ray.stream.guard import GuardPolicy
from perkunas_ray.stream.loss_scale import LossScaler
from perkunas_ray.stream.memory import MemoryTracker
from perkunas_ray.stream.staging import ShardStager, StageEntry
from perkunas_ray.stream.writer import WriteBehind

pytestmark = pytest.mark.unit


def test_global_clip_matches_clip_grad_norm():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(7, 3), (5,), (4, 4, 2)]]
    for p in params:
        p.grad = torch.randn_like(p) * 3
    norms = [float(torch.linalg.vector_norm(p.grad)) for p in params]
    grads = [p.grad.clone() for p in params]
    want = torch.nn.utils.clip_grad_norm_(params, 0.5)
    got = total_norm(norms)
    assert got == pytest.approx(float(want), rel=1e-6)
    coef = torch.tensor(clip_coefficient(got, 0.5))
    for p, g in zip(params, grads, strict=True):
        assert torch.allclose(g * coef, p.grad, rtol=1e-6, atol=0)
    assert clip_coefficient(0.1, 0.5) == 1.0


def test_guard_policy_tolerances_and_scales():
    policy = GuardPolicy(StreamConfig(guard_replay_loss_tolerance=0.01, guard_replay_loss_tolerance_ratio=0.001,
                                      guard_replay_lr_scales=(1.0, 0.5), guard_replay_max_replays=3))
    assert not policy.rose(2.0, 2.005)  # inside the absolute tolerance
    assert policy.rose(2.0, 2.02)
    assert not policy.rose(100.0, 100.05)  # inside the relative tolerance (0.1)
    assert policy.rose(2.0, float("nan"))
    assert policy.scales(0)[0] == 1.0 and policy.scales(5)[0] == 0.5
    assert not policy.exhausted(2) and policy.exhausted(3)


def test_loss_scaler_follows_grad_scaler_rule():
    scaler = LossScaler(True, init_scale=8.0, growth_interval=2)
    scaler.update(found_inf=True)
    assert scaler.scale == 4.0
    scaler.update(False)
    scaler.update(False)
    assert scaler.scale == 8.0
    assert LossScaler(False).scale == 1.0


def test_writer_bounds_pending_writes():
    writer = WriteBehind(max_pending=2)
    gate = threading.Event()
    done = []
    writer.submit(lambda: (gate.wait(5), done.append(0)))
    writer.submit(lambda: done.append(1))
    writer.submit(lambda: done.append(2))  # the queue holds 2 while the first blocks
    blocked = threading.Thread(target=lambda: writer.submit(lambda: done.append(3)))
    blocked.start()
    time.sleep(0.2)
    assert blocked.is_alive() and writer.pending == 4
    gate.set()
    blocked.join(5)
    writer.drain()
    assert done == [0, 1, 2, 3] and writer.pending == 0
    writer.close()


def test_writer_surfaces_errors():
    writer = WriteBehind(max_pending=1)
    writer.submit(lambda: 1 / 0)
    with pytest.raises(RuntimeError, match="shard write failed"):
        writer.drain()
    writer.close()


def test_stager_respects_residency_and_counts_hits():
    tracker = MemoryTracker(torch.device("cpu"))
    shards = {f"s{i}": {"w": torch.ones(1000)} for i in range(5)}
    entries = [StageEntry(f"s{i}", "forward") for i in range(5)]
    stager = ShardStager(lambda name: shards[name], entries, torch.device("cpu"), tracker, max_resident=2, window=2)
    most = 0
    for i in range(5):
        stager.take(i)
        time.sleep(0.05)
        most = max(most, len(stager.staged))
        stager.release(i)
    stager.close()
    assert most <= 2 and stager.max_resident_seen <= 2
    assert stager.hits + stager.misses == 5 and stager.hits >= 3
    assert tracker.current == 0 and tracker.peak >= 4000


def test_durable_dir_publishes_manifest_last_and_prunes(tmp_path):
    local = tmp_path / "active" / "checkpoints" / "step_00000003"
    save_tensors(local / "shards" / "a.safetensors", {"x": torch.ones(3)})
    write_json_atomic(local / "state.json", {"step": 3})
    publish_manifest(local, 3)
    durable = DurableDir(f"file://{tmp_path / 'durable'}")
    assert durable.list_checkpoints() == []
    durable.upload_checkpoint(local, 3)
    assert durable.list_checkpoints() == [3]
    (tmp_path / "durable" / "checkpoints" / "step_00000003" / "manifest.json").unlink()
    assert durable.list_checkpoints() == []  # without its manifest a checkpoint is invisible
    for step in (3, 4, 5):
        durable.upload_checkpoint(local, step)
    durable.prune(2)
    assert durable.list_checkpoints() == [4, 5]


def test_worker_resources_and_actor_options_come_from_the_ray_config():
    cfg = RunConfig()
    cfg.train.device = "cpu"
    assert worker_resources(cfg, cluster_gpus=1) == {"CPU": 1, "GPU": 0}
    cfg.train.device = "auto"  # on a cluster with a GPU: each worker takes a GPU and no CPU
    assert worker_resources(cfg, cluster_gpus=1) == {"CPU": 0, "GPU": 1}
    cfg.ray.namespace, cfg.ray.worker_cpus = "team", 3.0
    assert worker_resources(cfg.validate(), cluster_gpus=0) == {"CPU": 3.0, "GPU": 0}
    store = actor_options(cfg, "r1", "shard_store")
    assert store["name"] == "perkunas:r1:shard_store" and store["namespace"] == "team"
    assert store["num_cpus"] == 0 and store["max_restarts"] == 0 and "num_gpus" not in store


def test_ray_config_is_validated():
    with pytest.raises(ConfigError, match="ray.worker_gpus must be >= 0, or -1"):
        RunConfig.from_mapping({"ray": {"worker_gpus": -2}}).validate()
    with pytest.raises(ConfigError, match="ray.num_workers must be >= 1"):
        RunConfig.from_mapping({"ray": {"num_workers": 0}}).validate()
    with pytest.raises(ConfigError, match="ray.max_failures"):
        RunConfig.from_mapping({"ray": {"max_failures": -2}}).validate()
    # a run dir's config.json from before data parallelism still loads: the compute actor's CPUs are the workers'
    old = RunConfig.from_mapping({"ray": {"compute_num_cpus": 2.0, "max_restarts": 0}}).validate()
    assert old.ray.worker_cpus == 2.0 and old.ray.max_failures == 3


def test_staging_on_cpu_is_zero_copy_of_the_host_arrays():
    """No side stream on CPU: staged parameters are views of the (read-only) host arrays, not copies."""
    copier = DeviceCopier(torch.device("cpu"))
    array = np.arange(6, dtype=np.float32)
    tensors = copier.ready(copier.copy({"a": array, "b": torch.ones(2)}))
    assert copier.stream is None and tensors["a"].data_ptr() == array.ctypes.data
    assert torch.equal(tensors["b"], torch.ones(2))


def test_gradients_on_cpu_are_handed_over_as_they_are():
    """No copy stream on CPU: the store gets the gradient tensors themselves, and nothing stays in flight."""
    drain = GradDrain(torch.device("cpu"))
    grad = torch.arange(4.0)
    copy = drain.start({"w": grad})
    assert drain.stream is None and drain.in_flight is None
    assert copy.wait()["w"] is grad
