"""train.dtype: auto resolves by device (bf16 on CUDA, fp32 on CPU); a bad value names the field."""

from __future__ import annotations

import pytest
import torch

from perkunas_ray.config import RunConfig, TrainConfig
from perkunas_ray.errors import ConfigError
from perkunas_ray.stream.batch import autocast_context
from perkunas_ray.stream.precision import activation_bytes, compute_dtype, dtype_name


def test_auto_is_the_default_and_resolves_by_device():
    train = TrainConfig()
    assert train.dtype == "auto"
    assert compute_dtype(train, torch.device("cpu")) == torch.float32
    # planning for a GPU from here (no CUDA) assumes bf16, as on the GPUs the runtime is sized for
    if not torch.cuda.is_available():
        assert compute_dtype(train, "cuda") == torch.bfloat16
        assert activation_bytes(train, "cuda") == 2
    assert activation_bytes(train, "cpu") == 4


def test_explicit_dtypes_are_kept():
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        assert compute_dtype(TrainConfig(dtype=name), "cpu") == dtype
        assert compute_dtype(TrainConfig(dtype=name), "cuda") == dtype


def test_bad_dtype_names_the_field():
    with pytest.raises(ConfigError, match=r"train\.dtype must be one of auto, fp32, bf16, fp16, got 'fp8'"):
        RunConfig.from_mapping({"train": {"dtype": "fp8"}}).validate()
    with pytest.raises(ConfigError, match=r"train\.dtype"):
        dtype_name("float32", "cpu")


def test_auto_autocast_on_cpu_is_no_autocast():
    with autocast_context(torch.device("cpu"), "auto"):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.float32
