"""Staged shards on CUDA: copied on a side stream from pinned memory, equal to the host values when used."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perkunas_ray.stream.device_copy import DeviceCopier

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
