"""Chunked cross-entropy: the LM head is applied per chunk of tokens, so (tokens, vocab) logits never exist.

Each chunk's logits are recomputed in backward (activation checkpointing per chunk), so at most one
chunk of logits is alive at a time in forward and in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def count_targets(targets: torch.Tensor) -> torch.Tensor:
    """Number of labelled positions (targets other than IGNORE_INDEX)."""
    return (targets != IGNORE_INDEX).sum()


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.t()).float()  # (chunk, vocab), fp32 for a stable softmax
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk_tokens: int) -> torch.Tensor:
    """Mean token cross-entropy of logits = hidden @ weight.T against targets.

    hidden (..., D), weight (V, D), targets (...) with IGNORE_INDEX for positions without a label.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    num_targets = count_targets(t).clamp(min=1)
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], chunk_tokens):
        hc, tc = h[start:start + chunk_tokens], t[start:start + chunk_tokens]
        if torch.is_grad_enabled() and (hc.requires_grad or weight.requires_grad):
            total = total + checkpoint(_chunk_loss_sum, hc, weight, tc, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(hc, weight, tc)
    return total / num_targets
