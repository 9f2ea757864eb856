"""The decoder LM: token embedding, pre-norm blocks, final norm, (tied) LM head, chunked CE.

The forward of training, evaluation, export checks and reference generation: training attends causally,
generation passes a KV cache as the `attn` argument; a stream shard is this same module holding only its part
(the embedding, a run of blocks, or final norm + head). Parameter names are Hugging Face Llama's
(`model.layers.3.self_attn.q_proj.weight`), so a state dict exports as is. No I/O, no Ray, no streaming here.

The block's arithmetic lives in three places that must change together: here (model/layers.py), the serving
engine's leaner copy (engine/decode_forward.py) and its C++ decode blocks (engine/csrc/decode_layers.cpp). The
engine's copies exist for decode speed (dispatch, not arithmetic, bounds a CPU decode step). Held equal by
tests/unit/test_engine_fast_paths.py (decode_forward == this forward) and tests/unit/test_engine_cpu_kernels.py
(decode_layers == decode_forward), and end to end by tests/unit/test_engine_generate.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from perkunas_ray.config import ModelConfig
from perkunas_ray.model.attention import CAUSAL_ATTENTION, AttentionBackend, KVCache
from perkunas_ray.model.init import init_parameters_
from perkunas_ray.model.layers import Block, RMSNorm, rope_cos_sin
from perkunas_ray.model.loss import chunked_cross_entropy


class DecoderBody(nn.Module):
    """Everything under the `model.` prefix, or the part of it one stream shard owns."""

    def __init__(self, cfg: ModelConfig, layer_ids: Iterable[int], embed: bool, norm: bool) -> None:
        super().__init__()
        if embed:
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # Keyed by layer id, so a shard's run of blocks keeps the full model's names.
        self.layers = nn.ModuleDict({str(i): Block(cfg, i) for i in layer_ids})
        if norm:
            self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class DecoderLM(nn.Module):
    """The decoder; given `layer_ids`, `embed` and `head`, only that part of it (a stream shard)."""

    def __init__(self, cfg: ModelConfig, layer_ids: Iterable[int] | None = None, embed: bool = True,
                 head: bool = True) -> None:
        super().__init__()
        self.config = cfg
        self.has_embed, self.has_head = embed, head
        self.model = DecoderBody(cfg, range(cfg.n_layers) if layer_ids is None else layer_ids, embed, head)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False) \
            if head and not cfg.tie_embeddings else None
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.activation_checkpointing = False

    @property
    def head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def _output_weight(self, tied_weight: torch.Tensor | None) -> torch.Tensor:
        """The head's weight; a tied head shard holds no embedding, so borrows the one passed in."""
        if self.lm_head is not None or self.has_embed:
            return self.head_weight
        if tied_weight is None:
            raise ValueError("tied embeddings: the head shard needs the embedding weight "
                             "passed as tied_weight")
        return tied_weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T) -> hidden (B, T, D)."""
        return self.embed_dropout(self.model.embed_tokens(input_ids))

    def run_layers(self, hidden: torch.Tensor, positions: torch.Tensor | None = None,
                   attn: AttentionBackend = CAUSAL_ATTENTION, recompute: bool = False) -> torch.Tensor:
        """hidden (B, T, D) at positions (B, T), default 0..T-1 -> hidden (B, T, D) through the blocks held.

        recompute: activation checkpointing per block, for training; only with the stateless default backend,
        since replaying a block in backward would write a cache twice.
        """
        b, t, _ = hidden.shape
        if positions is None:
            positions = torch.arange(t, device=hidden.device).expand(b, t)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, hidden.dtype)
        for block in self.model.layers.values():
            if recompute:
                hidden = checkpoint(block, hidden, cos, sin, use_reentrant=False)
            else:
                hidden = block(hidden, cos, sin, attn)
        return hidden

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None = None,
                tied_weight: torch.Tensor | None = None) -> torch.Tensor:
        """The parts held, in order. inputs: token ids (B, T) with the embedding, else hidden (B, T, D).

        Returns hidden (B, T, D), or with the head the mean next-token cross-entropy against targets (B, T)
        (-100 for unlabeled positions). A tied head shard takes the embedding weight as tied_weight.
        """
        hidden = self.embed(inputs) if self.has_embed else inputs
        if len(self.model.layers):
            hidden = self.run_layers(hidden, recompute=self.activation_checkpointing and self.training)
        if not self.has_head:
            return hidden
        return chunked_cross_entropy(self.model.norm(hidden), self._output_weight(tied_weight), targets,
                                     self.config.lm_head_chunk_tokens)

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                      attn: AttentionBackend = CAUSAL_ATTENTION) -> torch.Tensor:
        """input_ids (B, T) at positions (B, T), default 0..T-1 -> final-normed hidden states (B, T, D)."""
        return self.model.norm(self.run_layers(self.embed(input_ids), positions, attn))

    def logits(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Full logits (B, T, V) for generation and tests, not training; with a cache, positions follow it."""
        b, t = input_ids.shape
        start = 0 if cache is None else cache.length
        positions = torch.arange(start, start + t, device=input_ids.device).expand(b, t)
        h = self.hidden_states(input_ids, positions, CAUSAL_ATTENTION if cache is None else cache)
        return h @ self.head_weight.t()


def build_model(cfg: ModelConfig, seed: int | None = None, device: str | torch.device = "cpu") -> DecoderLM:
    """A model on `device`; with a seed, initialised by the same per-parameter rule the shard store uses."""
    model = DecoderLM(cfg).to(device)
    if seed is not None:
        init_parameters_(model, cfg, seed)
    return model


def parameter_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter, computed on the meta device (no memory)."""
    with torch.device("meta"):
        model = DecoderLM(cfg)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def count_parameters(cfg: ModelConfig) -> int:
    return sum(int(torch.Size(s).numel()) for s in parameter_shapes(cfg).values())
