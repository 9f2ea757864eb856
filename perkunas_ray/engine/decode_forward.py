"""The engine's forward pass: the DecoderLM's weights and math in fewer tensor ops per step than the training module.

At serving batch sizes on CPU a step is mostly per-op dispatch: the speed preset ran ~230 top-level aten ops
a decode step. Here each RMSNorm is one fused op instead of eight, RoPE reads a cached cos/sin table (one
lookup per step instead of recomputing the frequencies) and rotates with one roll instead of chunk/neg/cat,
and the linears skip nn.Module dispatch (on CPU: oneDNN's packed weights, or a single row in row blocks across
the threads; engine/cpu_linear.py). Same operations in the same order as model/layers.py otherwise; the engine's
greedy-equals-transformers and equals-reference tests hold it to that.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from perkunas_ray.engine.cpu_kernels import RMSNormKernel
from perkunas_ray.engine.cpu_linear import StepLinear
from perkunas_ray.model.attention import AttentionBackend
from perkunas_ray.model.decoder import DecoderLM
from perkunas_ray.model.layers import RMSNorm, rope_cos_sin


def rms_norm(x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    """RMSNorm as model/layers.py computes it (normalise in fp32, cast back, then the weight), fused."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.eps)
    return norm.weight * F.rms_norm(x.float(), norm.weight.shape, None, norm.eps).to(x.dtype)


@dataclasses.dataclass
class BlockLinears:
    """A decoder block's seven linear weights, ready for the engine's step."""

    q: StepLinear
    k: StepLinear
    v: StepLinear
    o: StepLinear
    gate: StepLinear
    up: StepLinear
    down: StepLinear

    @classmethod
    def of(cls, block: torch.nn.Module) -> BlockLinears:
        a, mlp = block.self_attn, block.mlp
        return cls(*(StepLinear(m.weight) for m in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj,
                                                     mlp.up_proj, mlp.down_proj)))


class DecodeForward:
    """hidden_states(input_ids, positions, attn) of a DecoderLM, for the engine's flat (1, N) batches."""

    def __init__(self, model: DecoderLM, rms_norm_kernel: RMSNormKernel | None = None) -> None:
        self.model = model
        self.rms_norm_kernel = rms_norm_kernel  # the C++ one-pass RMSNorm (engine/cpu_kernels.py), fp32 CPU
        self.cfg = model.config
        self.blocks = list(model.model.layers.values())
        self.linears = [BlockLinears.of(block) for block in self.blocks]
        self.head = StepLinear(model.head_weight, wide=True)
        self.dtype = model.head_weight.dtype
        self.device = model.head_weight.device
        self.cos = self.sin = torch.empty(0, self.cfg.head_dim)
        self._grow_rope(self.cfg.max_seq_len)

    def _grow_rope(self, num_positions: int) -> None:
        """cos and sign-folded sin tables for positions [0, num_positions): rotate_half(x) * sin equals
        roll(x, half) * sin with the first half of sin negated (a sign flip is exact)."""
        positions = torch.arange(num_positions, device=self.device)[None]
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, self.dtype)
        half = self.cfg.head_dim // 2
        self.cos, self.sin = cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)

    def _norm(self, x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
        if self.rms_norm_kernel is not None and x.is_contiguous() and x.dtype == torch.float32:
            return self.rms_norm_kernel(x, norm.weight, norm.eps)
        return rms_norm(x, norm)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + torch.roll(x, self.cfg.head_dim // 2, dims=-1) * sin

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, max_position: int,
                 attn: AttentionBackend) -> torch.Tensor:
        """input_ids, positions (1, N); max_position: the largest of the positions -> final-normed hidden (N, D)."""
        if max_position >= self.cos.shape[0]:  # sink+window pruning lets positions outgrow max_seq_len
            self._grow_rope(2 * (max_position + 1))
        n = input_ids.shape[1]
        cfg = self.cfg
        heads, kv_heads, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        cos = self.cos.index_select(0, positions[0])  # (N, hd), broadcast over (1, heads, N, hd)
        sin = self.sin.index_select(0, positions[0])
        x = F.embedding(input_ids, self.model.model.embed_tokens.weight)  # (1, N, D)
        for block, lin in zip(self.blocks, self.linears, strict=True):
            a = block.self_attn
            h = self._norm(x, block.input_layernorm)
            q = lin.q(h).view(1, n, heads, hd)
            k = lin.k(h).view(1, n, kv_heads, hd)
            v = lin.v(h).view(1, n, kv_heads, hd)
            if a.qk_norm:
                q, k = self._norm(q, a.q_norm), self._norm(k, a.k_norm)
            # The row-block product's output is feature-major; SDPA's fused CPU kernel (prefill chunks; decodes where
            # the C++ decode kernel is not built) needs a unit last stride, else it takes the math path (~3x slower
            # at 16 decodes). Keys and values reach it from the KV store, so.
            q = self._rope(q.transpose(1, 2), cos, sin).contiguous()
            k = self._rope(k.transpose(1, 2), cos, sin)
            y = attn.attend(a.layer_id, q, k, v.transpose(1, 2), a.softcap, 0.0)  # (1, heads, N, hd)
            x = x + lin.o(y.transpose(1, 2).reshape(1, n, heads * hd))
            h = self._norm(x, block.post_attention_layernorm)
            x = x + lin.down(F.silu(lin.gate(h)) * lin.up(h))
        return self._norm(x, self.model.model.norm)[0]
