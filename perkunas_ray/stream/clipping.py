"""Exact global clipping from per-parameter norms, computed as torch.nn.utils.clip_grad_norm_ does."""

from __future__ import annotations

import math

import torch


def total_norm(param_norms: list[float]) -> float:
    """The 2-norm of all gradients from each parameter's 2-norm (fp32, like clip_grad_norm_)."""
    if not param_norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.tensor(param_norms, dtype=torch.float32), 2.0))


def clip_coefficient(norm: float, max_norm: float) -> float:
    """clip_grad_norm_'s clamp(max_norm / (norm + 1e-6), max=1), in fp32."""
    coef = torch.tensor(max_norm, dtype=torch.float32) / (torch.tensor(norm, dtype=torch.float32) + 1e-6)
    return float(torch.clamp(coef, max=1.0))


def reported_clip_scale(mode: str, norm: float, max_norm: float) -> float:
    """What the step log records as clip_scale (matches the reference trainer)."""
    if mode == "none" or max_norm <= 0:
        return 1.0
    if mode == "global":
        return min(1.0, max_norm / (norm + 1e-6))
    return math.nan
