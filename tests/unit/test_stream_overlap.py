"""In process, the store's update of a shard runs beside the backward of the shards below it (immediate mode)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from perkunas_ray.data import BatchCursor
from perkunas_ray.stream.build import local_backend
from perkunas_ray.stream.interface import UpdatePlan
from tests.stream_helpers import open_or_init, small_config, small_data_dir

pytestmark = pytest.mark.unit


def test_shard_updates_start_during_the_backward_on_the_updater_thread(tmp_path):
    cfg = small_config(small_data_dir(tmp_path / "data"), tmp_path / "run", grad_clip_mode="shard")
    run = open_or_init(cfg)
    backend = local_backend(run)
    events: list[tuple[str, str]] = []  # (what, thread) in the order they happened
    store_update, compute_backward = backend.store.update, backend.compute._backward

    def update(name, *args, **kwargs):
        events.append((f"update {name}", threading.current_thread().name))
        return store_update(name, *args, **kwargs)

    def backward(*args, **kwargs):
        compute_backward(*args, **kwargs)
        events.append(("backward done", threading.current_thread().name))

    backend.store.update = update
    backend.compute._backward = backward
    cursor = BatchCursor(run.train_data, cfg.train.micro_batch_size, False, 0)
    batch = np.stack([cursor.next_batch() for _ in range(cfg.train.gradient_accumulation_steps)])
    try:
        _, pending = backend.train_step(batch, UpdatePlan(1e-3, True, "shard", 1.0), snapshot=False)
        backend.update_stats(pending)
    finally:
        backend.close()
        run.close()
    done = events.index(next(e for e in events if e[0] == "backward done"))
    updates = [e for e in events if e[0].startswith("update")]
    assert len(updates) == cfg.model.num_stream_shards
    assert all(thread.startswith("shard-update") for _, thread in updates)
    assert events.index(updates[0]) < done  # the head's update began before the embedding's backward ended

