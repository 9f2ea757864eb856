"""Attention of queries over keys/values gathered from KV blocks, masked by absolute token positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Key position given to padding blocks: later than any query, so the causal mask hides them.
PAD_POSITION = 2**62


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_positions: torch.Tensor,
                    query_positions: torch.Tensor, softcap: float = 0.0) -> torch.Tensor:
    """q (B, H, Tq, hd) over k/v (B, H_kv, Tk, hd) -> (B, H, Tq, hd).

    key_positions (B, Tk) and query_positions (B, Tq) are absolute token positions; a query attends
    to the keys at or before its own position. Padding, stale slots past the sequence's end and
    pruned blocks (absent from k) are therefore never attended. GQA repeats each KV head as the
    dense model does; soft-capping needs the score matrix, so it takes the explicit path.
    """
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    mask = key_positions[:, None, None, :] <= query_positions[:, None, :, None]  # (B, 1, Tq, Tk)
    if softcap <= 0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.float().softmax(-1).to(q.dtype) @ v


def block_key_positions(block_starts: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, K) start positions of the gathered blocks -> (B, K * block_size) positions of their slots."""
    offsets = torch.arange(block_size, device=block_starts.device)
    return (block_starts[:, :, None] + offsets).reshape(block_starts.shape[0], -1)
