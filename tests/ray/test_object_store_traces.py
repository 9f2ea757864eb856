"""Object-store boundaries: one entry per shard boundary, counted in the compute's memory until it leaves."""

from __future__ import annotations

import pytest
import torch

from perkunas_ray.stream.memory import MemoryTracker
from perkunas_ray.stream.remote_compute import ObjectStoreTraces

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_boundary_leaves_once_complete_and_reads_back_equal(ray_instance, dtype):
    tracker = MemoryTracker(torch.device("cpu"))
    traces = ObjectStoreTraces(torch.device("cpu"), tracker, num_micro=3)
    tensors = [torch.randn(2, 5, 8).to(dtype) for _ in range(3)]
    nbytes = tensors[0].numel() * tensors[0].element_size()
    traces.put((1, 0), tensors[0])
    traces.put((1, 1), tensors[1])
    assert tracker.by_kind["boundaries"] == 2 * nbytes  # still in this process: counted
    assert torch.equal(traces.get((1, 1)), tensors[1])
    traces.put((1, 2), tensors[2])
    assert tracker.by_kind["boundaries"] == 0  # one object-store entry now holds all three
    for m in (2, 0, 1):
        got = traces.get((1, m))
        assert got.dtype == dtype and torch.equal(got, tensors[m])
        got.add_(1)  # the store's copy is read-only; what get returns is the caller's to change
    assert torch.equal(traces.get((1, 0)), tensors[0])
    for m in range(3):
        traces.drop((1, m))
    with pytest.raises(KeyError):
        traces.get((1, 0))


def test_clear_forgets_incomplete_boundaries(ray_instance):
    tracker = MemoryTracker(torch.device("cpu"))
    traces = ObjectStoreTraces(torch.device("cpu"), tracker, num_micro=2)
    traces.put((2, 0), torch.ones(4))
    traces.clear()
    assert tracker.by_kind["boundaries"] == 0


def test_no_room_to_gather_sends_each_micro_batch_alone(ray_instance):
    tracker = MemoryTracker(torch.device("cpu"))
    tensors = [torch.randn(4, 16) for _ in range(3)]
    nbytes = tensors[0].numel() * 4
    tracker.add("shards", 1000)
    traces = ObjectStoreTraces(torch.device("cpu"), tracker, num_micro=3, max_bytes=1000 + nbytes + nbytes // 2)
    traces.put((1, 0), tensors[0])  # fits: gathered
    traces.put((1, 1), tensors[1])  # would pass the budget: both leave now
    assert tracker.by_kind["boundaries"] == 0
    traces.put((1, 2), tensors[2])  # room again: gathered
    assert tracker.by_kind["boundaries"] == nbytes
    assert tracker.peak <= 1000 + nbytes + nbytes // 2
    assert all(torch.equal(traces.get((1, m)), tensors[m]) for m in range(3))
