"""The resident fast path equals the streamed path (fp32, bit for bit), and the planner's verdict decides it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from perkunas_ray.checkpoint.format import latest_checkpoint, load_model_state
from perkunas_ray.stream.build import local_backend
from perkunas_ray.stream.residency import choose_resident, resident_state_bytes
from tests.stream_helpers import open_or_init, small_config, small_data_dir, train_in_process

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return small_data_dir(tmp_path_factory.mktemp("resident_data"))


@pytest.mark.parametrize("clip", ["global", "shard"])
def test_resident_steps_equal_streamed_steps_bit_for_bit(tmp_path, data_dir, clip):
    runs = {}
    for mode in ("off", "on"):
        cfg = small_config(data_dir, tmp_path / mode, max_steps=4, grad_clip_mode=clip, stream__resident=mode)
        runs[mode] = train_in_process(cfg)
    assert runs["on"].losses == runs["off"].losses
    streamed = load_model_state(latest_checkpoint(tmp_path / "off"))
    resident = load_model_state(latest_checkpoint(tmp_path / "on"))
    assert all(torch.equal(streamed[k], resident[k]) for k in streamed)


def test_the_backend_is_resident_only_when_asked_or_on_a_device_that_holds_the_state(tmp_path, data_dir):
    cfg = small_config(data_dir, tmp_path / "run", stream__resident="on")
    with open_or_init(cfg) as run:
        backend = local_backend(run)
        try:
            assert backend.resident and backend.compute.cfg.stream.trace_storage == "device"
        finally:
            backend.close()
    shaped = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seq_len=32))
    auto = dataclasses.replace(shaped, stream=dataclasses.replace(cfg.stream, resident="auto"))
    assert not choose_resident(auto, torch.device("cpu"))  # the store's memory is the compute's already
    need = resident_state_bytes(auto, "cuda")
    for budget, expected in ((need, True), (need - 1, False)):
        budgeted = dataclasses.replace(auto, stream=dataclasses.replace(auto.stream, max_resident_bytes=budget))
        assert choose_resident(budgeted, torch.device("cuda")) is expected
    delayed = dataclasses.replace(auto, stream=dataclasses.replace(auto.stream, delayed_update=True))
    assert not choose_resident(delayed, torch.device("cuda"))
