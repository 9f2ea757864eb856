"""The decoder block's parts: RMSNorm, RoPE, grouped-query attention (optional QK-norm, soft-cap), SwiGLU.

Written to match Hugging Face's Llama/Qwen3 modules operation for operation, so exported weights give
the same logits there. No I/O, no Ray, no streaming in here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from perkunas_ray.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 then cast back before the weight, as HF's LlamaRMSNorm does.
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[
        torch.Tensor, torch.Tensor]:
    """cos/sin tables for `positions` (B, T) -> each (B, T, head_dim), half-split layout like HF."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64)
                                .float() / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # (B, T, head_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, hd); cos/sin (B, T, hd)."""
    cos, sin = cos[:, None], sin[:, None]
    return x * cos + _rotate_half(x) * sin


class KVCache:
    """Dense per-layer key/value cache for the reference generation loop: (B, n_kv, T, hd) per layer."""

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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softcap: float, q_offset: int,
              dropout: float, training: bool) -> torch.Tensor:
    """Causal attention of q (B, H, Tq, hd) over k/v (B, H, Tk, hd); query i sits at position q_offset + i.

    Soft-capping needs the score matrix, so it runs the explicit path; otherwise SDPA.
    """
    tq, tk = q.shape[2], k.shape[2]
    p = dropout if training else 0.0
    if softcap <= 0:
        if q_offset == 0 and tq == tk:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        mask = _causal_mask(tq, tk, q_offset, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~_causal_mask(tq, tk, q_offset, q.device), float("-inf"))
    probs = F.dropout(scores.float().softmax(-1).to(q.dtype), p=p, training=training)
    return probs @ v


def _causal_mask(tq: int, tk: int, q_offset: int, device: torch.device) -> torch.Tensor:
    rows = torch.arange(tq, device=device)[:, None] + q_offset
    return torch.arange(tk, device=device)[None, :] <= rows  # (Tq, Tk), True = may attend


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hd = cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, hd
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * hd, cfg.d_model, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.norm_eps)
            self.k_norm = RMSNorm(hd, cfg.norm_eps)
        self.qk_norm = cfg.qk_norm
        self.softcap = cfg.attn_softcap
        self.dropout = cfg.dropout

    def project_qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[
            torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> q (B, H, T, hd), k/v (B, H_kv, T, hd), with QK-norm and RoPE applied."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                layer_id: int = 0) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.project_qkv(x, cos, sin)
        q_offset = 0
        if cache is not None:
            previous = cache.keys[layer_id]
            q_offset = 0 if previous is None else previous.shape[2]
            k, v = cache.update(layer_id, k, v)
        rep = self.n_heads // self.n_kv_heads
        if rep > 1:  # GQA: each KV head serves `rep` query heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = attention(q, k, v, self.softcap, q_offset, self.dropout, self.training)  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                layer_id: int = 0) -> torch.Tensor:
        x = x + self.resid_dropout(self.self_attn(self.input_layernorm(x), cos, sin, cache, layer_id))
        return x + self.resid_dropout(self.mlp(self.post_attention_layernorm(x)))
