"""Device and dtype resolution shared by trainers and engines."""

from __future__ import annotations

import torch

from perkunas_ray.errors import ConfigError

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is a config error, not a crash."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available on this machine")
    return torch.device(name)


def torch_dtype(name: str) -> torch.dtype:
    if name not in TORCH_DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(TORCH_DTYPES)}, got {name!r}")
    return TORCH_DTYPES[name]
