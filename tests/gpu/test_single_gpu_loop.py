"""The single-GPU loop on CUDA: bf16 by default, the resident path against streaming, delayed updates."""

from __future__ import annotations

import pytest
import torch

from perkunas_ray.checkpoint.format import latest_checkpoint, load_model_state
from perkunas_ray.config import TrainConfig
from perkunas_ray.stream.build import local_backend
from perkunas_ray.stream.precision import compute_dtype
from tests.stream_helpers import (
    max_relative_difference,
    open_or_init,
    small_config,
    small_data_dir,
    train_in_process,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return small_data_dir(tmp_path_factory.mktemp("single_gpu_data"))


def test_auto_dtype_is_bf16_on_this_gpu():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    assert compute_dtype(TrainConfig(), torch.device("cuda")) == expected


def test_auto_residency_keeps_a_small_model_on_the_device(tmp_path, data_dir):
    cfg = small_config(data_dir, tmp_path / "run", device="cuda", stream__resident="auto")
    with open_or_init(cfg) as run:
        backend = local_backend(run)
        try:
            assert backend.resident
            assert all(p.device.type == "cuda" for p in backend.store.params[backend.store.names[0]].values())
        finally:
            backend.close()


def test_resident_steps_equal_streamed_steps_in_fp32(tmp_path, data_dir):
    """Both compute the same gradients on the GPU; the resident AdamW is CUDA's fused kernel and the streamed one
    the CPU's, whose roundings may differ in the last bit: 1e-5 relative (the exactness tests' tolerance)."""
    runs = {mode: train_in_process(small_config(data_dir, tmp_path / mode, max_steps=3, device="cuda",
                                                stream__resident=mode)) for mode in ("on", "off")}
    for a, b in zip(runs["on"].losses, runs["off"].losses, strict=True):
        assert abs(a - b) <= 1e-5 * abs(b)
    resident = load_model_state(latest_checkpoint(tmp_path / "on"))
    streamed = load_model_state(latest_checkpoint(tmp_path / "off"))
    assert max_relative_difference(streamed, resident) <= 1e-5


def test_delayed_updates_run_on_cuda(tmp_path, data_dir):
    exact = train_in_process(small_config(data_dir, tmp_path / "exact", max_steps=8, device="cuda",
                                          stream__resident="off"))
    delayed = train_in_process(small_config(data_dir, tmp_path / "delayed", max_steps=8, device="cuda",
                                            stream__resident="off", stream__delayed_update=True,
                                            stream__delayed_update_warmup_steps=2))
    assert delayed.losses[:3] == pytest.approx(exact.losses[:3], rel=1e-5)
    assert max(abs(d - e) / e for d, e in zip(delayed.losses, exact.losses, strict=True)) <= 0.025

