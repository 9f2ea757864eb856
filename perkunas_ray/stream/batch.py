"""A token block as every trainer's step sees it: inputs and targets (with the label mask), run under autocast.

Label mask encoding: a block is one integer array, so the object store, the batch cursor and resume carry
SFT data with no change. A position whose token must not be learned as a target (a prompt token, padding)
holds the negative number -(id + 1); its input id is recovered from it and its target becomes IGNORE_INDEX.
Pretraining data (unsigned ids, all non-negative) is every token trained, as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from perkunas_ray.device import torch_dtype
from perkunas_ray.model.loss import IGNORE_INDEX, count_targets
from perkunas_ray.stream.precision import dtype_name


def mask_untrained(ids: np.ndarray, trained: np.ndarray) -> np.ndarray:
    """int32 block values: ids where `trained`, -(id + 1) elsewhere (the inverse of split_batch's decoding)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.where(np.asarray(trained, dtype=bool), ids, -ids - 1).astype(np.int32)


def split_batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+1) token block -> inputs (B, T), targets (B, T); untrained targets are IGNORE_INDEX."""
    tokens = torch.as_tensor(batch, dtype=torch.long, device=device)
    untrained = tokens < 0
    ids = torch.where(untrained, -tokens - 1, tokens)
    targets = torch.where(untrained[:, 1:], IGNORE_INDEX, ids[:, 1:])
    return ids[:, :-1], targets


def count_trained_targets(blocks: np.ndarray) -> int:
    """Trained targets in (..., T+1) token blocks, as split_batch decodes them (a negative value is untrained)."""
    return int((np.asarray(blocks)[..., 1:] >= 0).sum())


def micro_batch_weights(targets: Sequence[torch.Tensor], total: int | None = None) -> list[float]:
    """Each micro-batch's share of the step's trained tokens: a micro-batch's mean loss times its weight,
    summed over the step, is the step's sum of token losses over its trained tokens, so accumulation is
    exact when micro-batches train different numbers of tokens (SFT). Equal counts give 1/M each.
    `total`: the step's trained tokens over every data-parallel worker (default: these micro-batches')."""
    counts = [int(count_targets(t)) for t in targets]
    total = sum(counts) if total is None else total
    return [c / total if total else 0.0 for c in counts]


def autocast_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """`dtype`: fp32 (no autocast), bf16, fp16, or auto (resolved for `device`: stream/precision.py)."""
    dtype = dtype_name(dtype, device)
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch_dtype(dtype))
