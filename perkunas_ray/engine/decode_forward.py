"""The engine's forward pass: the DecoderLM's weights and math in fewer tensor ops per step than the training module.

At serving batch sizes on CPU a step is mostly per-op dispatch: the speed preset ran ~230 top-level aten ops
a decode step. Here each RMSNorm is one fused op instead of eight, RoPE reads a cached cos/sin table (one
lookup per step instead of recomputing the frequencies) and rotates with one roll instead of chunk/neg/cat,
and the linears skip nn.Module dispatch (on CPU: the C++ panels where they are built, else oneDNN's packed
weights or a single row in row blocks across the threads; engine/cpu_linear.py). Same operations in the same order as model/layers.py otherwise; the engine's
greedy-equals-transformers and equals-reference tests hold it to that.

A step of only a few decodes (fp32 on CPU, the C++ kernels built) goes further: `decodes` runs every block in one
C++ call (engine/csrc/decode_layers.cpp), where the eager forward's ~25 ops per block cost more than the weights'
arithmetic.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from perkunas_ray.engine.cpu_kernels import CpuKernels
from perkunas_ray.engine.cpu_linear import StepLinear
from perkunas_ray.engine.kv_store import KVStore
from perkunas_ray.engine.step_inputs import StepInputs
from perkunas_ray.model.attention import AttentionBackend
from perkunas_ray.model.decoder import DecoderLM
from perkunas_ray.model.layers import RMSNorm, rope_cos_sin


def rms_norm(x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    """RMSNorm as model/layers.py computes it (normalise in fp32, cast back, then the weight), fused."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.eps)
    return norm.weight * F.rms_norm(x.float(), norm.weight.shape, None, norm.eps).to(x.dtype)


LINEAR_NAMES = ("q", "k", "v", "o", "gate", "up", "down")


def linear_modules(block: torch.nn.Module) -> list[torch.nn.Linear]:
    """A decoder block's seven linear layers, in LINEAR_NAMES order."""
    a, mlp = block.self_attn, block.mlp
    return [a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]


def linear_weights(block: torch.nn.Module) -> list[torch.Tensor]:
    """A decoder block's seven linear weights, in LINEAR_NAMES order."""
    return [m.weight for m in linear_modules(block)]


def _free_module_weight(module: torch.nn.Linear, step_linear: StepLinear) -> int:
    """Free `module`'s weight where `step_linear` holds it as panels: the bytes freed (0: kept)."""
    if not step_linear.release_weight():
        return 0
    freed = module.weight.numel() * module.weight.element_size()
    module.weight = torch.nn.Parameter(module.weight.new_empty(0), requires_grad=False)
    return freed


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
    def of(cls, block: torch.nn.Module, kernels: CpuKernels | None = None) -> BlockLinears:
        return cls(*(StepLinear(w, kernels=kernels) for w in linear_weights(block)))

    def kernel_weights(self, block: torch.nn.Module) -> list[torch.Tensor]:
        """The block's weights in the order csrc/decode_layers.cpp reads them: the linears as their panels (empty
        q/k norms without qk-norm); None where a linear has no panels (not fp32 on CPU)."""
        a = block.self_attn
        panels = {name: getattr(self, name).panels for name in LINEAR_NAMES}
        none = torch.empty(0)
        q_norm, k_norm = (a.q_norm.weight, a.k_norm.weight) if a.qk_norm else (none, none)
        return [block.input_layernorm.weight, panels["q"], panels["k"], panels["v"], q_norm, k_norm, panels["o"],
                block.post_attention_layernorm.weight, panels["gate"], panels["up"], panels["down"]]


class DecodeForward:
    """hidden_states(input_ids, positions, attn) of a DecoderLM, for the engine's flat (1, N) batches."""

    def __init__(self, model: DecoderLM, kernels: CpuKernels | None = None, *, fused_decodes: bool = False,
                 free_model_weights: bool = False) -> None:
        """kernels: the C++ CPU kernels (engine/cpu_kernels.py; fp32 CPU only); fused_decodes: whether `decodes` may
        run the blocks in one call (the KV store holds floats the kernel reads in place); free_model_weights: this
        forward owns the model: each linear weight it holds as panels (a full copy) is freed from the model as soon
        as it is packed, so the engine keeps one copy and its build never holds two of the whole model. The modules
        keep empty weights (the model's own forward no longer runs); the embedding (a tied head's too) and the
        norms stay. `freed_bytes`: what that freed."""
        self.model = model
        self.rms_norm_kernel = kernels.rms_norm if kernels is not None else None
        self.cfg = model.config
        self.dtype = model.head_weight.dtype
        self.device = model.head_weight.device
        self.blocks = list(model.model.layers.values())
        self.linears: list[BlockLinears] = []
        self.freed_bytes = 0
        for block in self.blocks:
            self.linears.append(BlockLinears.of(block, kernels))
            if free_model_weights:
                lin = self.linears[-1]
                self.freed_bytes += sum(_free_module_weight(module, getattr(lin, name))
                                        for module, name in zip(linear_modules(block), LINEAR_NAMES, strict=True))
        self.head = StepLinear(model.head_weight, wide=True, kernels=kernels)
        if free_model_weights and model.lm_head is not None:
            self.freed_bytes += _free_module_weight(model.lm_head, self.head)
        self.block_weights = [weight for block, lin in zip(self.blocks, self.linears, strict=True)
                              for weight in lin.kernel_weights(block)]
        kernel_ready = all(w is not None and w.is_contiguous() and w.dtype == torch.float32 and w.device.type == "cpu"
                           for w in [*self.block_weights, model.model.embed_tokens.weight, model.model.norm.weight])
        # The C++ forward of a decodes-only step (fp32 CPU weights as it reads them, over a float KV store).
        self.decode_layers = kernels.decode_layers if kernels is not None and fused_decodes and kernel_ready else None
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

    def _rope_rows(self, positions: torch.Tensor, max_position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (N, hd) at positions (N,)."""
        if max_position >= self.cos.shape[0]:  # sink+window pruning lets positions outgrow max_seq_len
            self._grow_rope(2 * (max_position + 1))
        return self.cos.index_select(0, positions), self.sin.index_select(0, positions)

    def decodes(self, step: StepInputs, kv_store: KVStore) -> torch.Tensor:
        """What __call__ returns, for a step whose only attention group is decodes the kernel reads in place
        (`decode_lengths` set): every block in one `decode_layers` call, writing each block's KV to `step.slots`."""
        assert self.decode_layers is not None and len(step.groups) == 1
        group = step.groups[0]
        assert group.decode_lengths is not None
        if step.max_position >= self.cos.shape[0]:  # sink+window pruning lets positions outgrow max_seq_len
            self._grow_rope(2 * (step.max_position + 1))
        return self.decode_layers(step.input_ids[0], self.model.model.embed_tokens.weight, step.positions[0],
                                  self.cos, self.sin, self.block_weights, kv_store.keys, kv_store.values, step.slots,
                                  group.block_table.contiguous(), group.decode_lengths, self.cfg.n_heads,
                                  self.cfg.norm_eps, self.model.model.norm.weight)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, max_position: int,
                 attn: AttentionBackend) -> torch.Tensor:
        """input_ids, positions (1, N); max_position: the largest of the positions -> final-normed hidden (N, D)."""
        n = input_ids.shape[1]
        cfg = self.cfg
        heads, kv_heads, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        cos, sin = self._rope_rows(positions[0], max_position)  # (N, hd), broadcast over (1, heads, N, hd)
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
