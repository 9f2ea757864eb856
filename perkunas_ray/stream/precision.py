"""The compute dtype of a run: train.dtype, with `auto` resolved by the device (bf16 autocast on CUDA, else fp32).

Master weights and optimizer state stay fp32 in the store whatever this says; the dtype decides what the
forward and replay run in (autocast), and so the size of the saved matmul activations. `auto` is the
default: a GPU with bf16 trains in bf16, a CPU (and the exactness tests, which say fp32) in fp32. Planning for
a GPU from a machine without one (device type "cuda", no CUDA here) assumes bf16, as every GPU the runtime
is sized for (Ampere on) has it.
"""

from __future__ import annotations

import torch

from perkunas_ray.config import DTYPES, TrainConfig
from perkunas_ray.device import TORCH_DTYPES
from perkunas_ray.errors import ConfigError

AUTO_DTYPE = "auto"


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def bf16_supported(device: torch.device | str) -> bool:
    """bf16 autocast on `device` (a CUDA device not here: assumed, see module doc)."""
    if _device_type(device) != "cuda":
        return False
    if not torch.cuda.is_available():
        return True
    return torch.cuda.is_bf16_supported()


def dtype_name(dtype: str, device: torch.device | str, field: str = "train.dtype") -> str:
    """`dtype` (auto | fp32 | bf16 | fp16) as one of fp32, bf16, fp16 for a run on `device`."""
    if dtype == AUTO_DTYPE:
        return "bf16" if bf16_supported(device) else "fp32"
    if dtype not in TORCH_DTYPES:
        raise ConfigError(f"{field} must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def compute_dtype_name(train: TrainConfig, device: torch.device | str) -> str:
    return dtype_name(train.dtype, device)


def compute_dtype(train: TrainConfig, device: torch.device | str) -> torch.dtype:
    """The dtype the step's matmuls run in on `device` (torch.float32: no autocast)."""
    return TORCH_DTYPES[compute_dtype_name(train, device)]


def activation_bytes(train: TrainConfig, device: torch.device | str) -> int:
    """Bytes per element of what autocast makes (matmul inputs and outputs a replay saves): 2 under bf16/fp16,
    4 in fp32. Boundaries stay fp32 either way: the residual stream starts as the embedding's fp32 output and
    every block adds to it in fp32."""
    return compute_dtype(train, device).itemsize
