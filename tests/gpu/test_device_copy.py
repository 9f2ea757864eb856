"""CUDA side streams: staged shards arrive intact before use; gradients leave intact while compute goes on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perkunas_ray.stream.device_copy import DeviceCopier, GradDrain

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_side_stream_copies_arrive_intact_and_ordered_before_use():
    device = torch.device("cuda", torch.cuda.current_device())
    copier = DeviceCopier(device)
    assert copier.stream is not None and copier.stream != torch.cuda.current_stream(device)
    rng = np.random.default_rng(0)
    hosts = [{"w": rng.standard_normal((2048, 2048), dtype=np.float32), "b": torch.arange(7.0)} for _ in range(4)]
    # Keep the compute stream busy while the copies are issued: the copies must not wait for it, and the
    # reads below must wait for the copies.
    busy = torch.randn(4096, 4096, device=device)
    for _ in range(8):
        busy = busy @ busy / 4096
    copies = [copier.copy(h) for h in hosts]
    for host, copy in zip(hosts, copies, strict=True):
        tensors = copier.ready(copy)
        assert tensors["w"].device == device
        assert torch.equal(tensors["w"].cpu(), torch.from_numpy(host["w"]))
        assert torch.equal(tensors["b"].cpu(), host["b"])
    torch.cuda.synchronize(device)


def test_gradients_leave_on_their_own_stream_after_the_kernels_that_made_them():
    device = torch.device("cuda", torch.cuda.current_device())
    drain = GradDrain(device)
    assert drain.stream is not None and drain.stream != torch.cuda.current_stream(device)
    copies, expected = [], []
    for k in range(4):
        # Made by queued kernels: the copy must wait for them (a read before would see zeros or garbage).
        grads = {"w": torch.full((2048, 2048), float(k), device=device).cumsum(0), "b": torch.arange(7.0, device=device)}
        expected.append({n: g.cpu() for n, g in grads.items()})
        copies.append(drain.start(grads))
        assert drain.in_flight is copies[-1]
        del grads  # the copy holds its sources until it has landed
    drain.settle()
    assert drain.in_flight is None
    for copy, want in zip(copies, expected, strict=True):
        got = copy.wait()
        assert got["w"].device.type == "cpu" and got["w"].is_pinned()
        assert torch.equal(got["w"], want["w"]) and torch.equal(got["b"], want["b"])
        assert copy.sources is None


def test_a_drain_without_room_copies_at_once():
    device = torch.device("cuda", torch.cuda.current_device())
    drain = GradDrain(device)
    copy = drain.start({"w": torch.ones(1024, device=device)}, overlap=False)
    assert drain.in_flight is None and copy.event is None and copy.sources is None
    assert torch.equal(copy.tensors["w"], torch.ones(1024))
