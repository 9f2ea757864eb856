"""Attention backends: what a block's queries attend over and where its new keys/values go.

A block projects q/k/v and applies RoPE; the backend passed in the call does the rest. The default
attends causally within the given tokens (training, full forward); `KVCache` appends to a dense
cache first (reference generation). The serving engine runs its own copy of the block (engine/decode_forward.py,
see model/decoder.py) with its paged-KV backend. No I/O, no Ray here.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class AttentionBackend(Protocol):
    def attend(self, layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softcap: float,
               dropout: float) -> torch.Tensor:
        """q (B, H, T, hd), new k/v (B, H_kv, T, hd) of layer `layer_id` -> (B, H, T, hd).

        dropout is the attention-probability dropout to apply (0 outside training).
        """


def _repeat_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GQA: each KV head serves H / H_kv query heads, repeated as Hugging Face does."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return k, v


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, softcap: float,
                     dropout: float = 0.0) -> torch.Tensor:
    """q (B, H, Tq, hd) over k/v (B, H_kv, Tk, hd) where mask (broadcast to (B, H, Tq, Tk)) is True.

    Soft-capping needs the score matrix, so it takes the explicit path; otherwise SDPA.
    """
    k, v = _repeat_kv(q, k, v)
    if softcap <= 0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.float().softmax(-1).to(q.dtype)
    if dropout > 0:
        probs = F.dropout(probs, p=dropout)
    return probs @ v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softcap: float, q_offset: int = 0,
              dropout: float = 0.0) -> torch.Tensor:
    """Causal attention of q (B, H, Tq, hd) over k/v (B, H_kv, Tk, hd); query i at position q_offset + i."""
    tq, tk = q.shape[2], k.shape[2]
    if softcap <= 0 and q_offset == 0 and tq == tk:  # training's case: SDPA's own causal kernel
        k, v = _repeat_kv(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
    rows = torch.arange(tq, device=q.device)[:, None] + q_offset
    mask = torch.arange(tk, device=q.device)[None, :] <= rows  # (Tq, Tk), True = may attend
    return masked_attention(q, k, v, mask, softcap, dropout)


class CausalAttention:
    """The default backend: each token attends to itself and the tokens before it in the same call."""

    def attend(self, layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softcap: float,
               dropout: float) -> torch.Tensor:
        return attention(q, k, v, softcap, 0, dropout)


CAUSAL_ATTENTION = CausalAttention()  # stateless, so one instance serves every call


class KVCache:
    """Dense per-layer key/value cache for the reference generation loop: (B, H_kv, T, hd) per layer.

    As a backend it appends the new keys/values, then attends the new queries over all of them.
    """

    def __init__(self, n_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def update(self, layer_id: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer_id] is not None:
            k = torch.cat([self.keys[layer_id], k], dim=2)
            v = torch.cat([self.values[layer_id], v], dim=2)
        self.keys[layer_id], self.values[layer_id] = k, v
        return k, v

    def attend(self, layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softcap: float,
               dropout: float) -> torch.Tensor:
        previous = self.keys[layer_id]
        q_offset = 0 if previous is None else previous.shape[2]
        k, v = self.update(layer_id, k, v)
        return attention(q, k, v, softcap, q_offset, dropout)
