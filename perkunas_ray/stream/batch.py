"""A token block as every trainer's step sees it: inputs and targets, run under the compute dtype's autocast."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from perkunas_ray.device import torch_dtype


def split_batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+1) token block -> inputs (B, T), targets (B, T)."""
    tokens = torch.as_tensor(batch, dtype=torch.long, device=device)
    return tokens[:, :-1], tokens[:, 1:]


def autocast_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch_dtype(dtype))
