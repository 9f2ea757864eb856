"""Host boundaries of a CUDA step on side streams: what comes back is what went down, in the forward's and the
replay's order, even when the compute stream is still busy making it and its memory is freed at once."""

from __future__ import annotations

import pytest
import torch

from perkunas_ray.stream.memory import MemoryTracker
from perkunas_ray.stream.trace_copy import OverlappedHostTraces

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_boundaries_come_back_equal_in_forward_and_replay_order():
    device = torch.device("cuda", torch.cuda.current_device())
    tracker = MemoryTracker(device)
    traces = OverlappedHostTraces(device, tracker)
    weight = torch.randn(2048, 2048, device=device)
    expected = {}
    for shard in (1, 2, 3):
        for micro in range(4):
            x = torch.randn(512, 2048, device=device)
            for _ in range(8):  # keep the compute stream busy while the download is queued
                x = torch.tanh(x @ weight)
            expected[(shard, micro)] = x.cpu()
            traces.put((shard, micro), x)
            del x  # the caller drops it at once, as the forward does
    for shard in (1, 2, 3):  # the next shard's forward
        for micro in range(4):
            assert torch.equal(traces.get((shard, micro)).cpu(), expected[(shard, micro)])
    for shard in (3, 2, 1):  # the replay, which drops each boundary after its use
        for micro in range(4):
            got = traces.get((shard, micro))
            torch.cuda._sleep(1_000_000)  # the compute stream lags behind the uploads of the next micro-batch
            assert torch.equal(got.cpu(), expected[(shard, micro)])
            traces.drop((shard, micro))
    assert tracker.current == 0
    traces.clear()
