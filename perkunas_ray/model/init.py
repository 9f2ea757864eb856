"""Deterministic per-parameter initialisation, so the full model and each shard initialise identically.

Each parameter draws from its own generator seeded by (run seed, parameter name): a shard can be
initialised alone, in any order, without building the whole model.
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn

from perkunas_ray.config import ModelConfig


def init_tensor(cfg: ModelConfig, name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The initial fp32 value of parameter `name`."""
    if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
        return torch.ones(shape)
    std = cfg.init_std
    if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
        std = std / math.sqrt(2 * cfg.n_layers)  # GPT-2's scaling of residual projections
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    return torch.randn(shape, generator=gen) * std


def init_parameters_(module: nn.Module, cfg: ModelConfig, seed: int) -> None:
    """Initialise every parameter of `module` (a full model or a shard) in place."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(init_tensor(cfg, name, tuple(param.shape), seed))
