"""The decoder LM: token embedding, pre-norm blocks, final norm, (tied) LM head, chunked CE, KV-cache forward.

Parameter names are Hugging Face Llama's (`model.layers.3.self_attn.q_proj.weight`), so a state dict
exports as is. No I/O, no Ray, no streaming here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from perkunas_ray.config import ModelConfig
from perkunas_ray.model.layers import Block, KVCache, RMSNorm, rope_cos_sin
from perkunas_ray.model.loss import chunked_cross_entropy


class DecoderBody(nn.Module):
    """Everything under the `model.` prefix."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class DecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = DecoderBody(cfg)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.activation_checkpointing = False

    @property
    def head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """input_ids (B, T) -> final-normed hidden states (B, T, D). With a cache, positions continue it."""
        b, t = input_ids.shape
        start = 0 if cache is None else cache.length
        positions = torch.arange(start, start + t, device=input_ids.device).expand(b, t)
        x = self.embed_dropout(self.model.embed_tokens(input_ids))  # (B, T, D)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer_id, block in enumerate(self.model.layers):
            if self.activation_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin, cache, layer_id)
        return self.model.norm(x)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; targets (B, T) use -100 for unlabeled positions."""
        h = self.hidden_states(input_ids)
        return chunked_cross_entropy(h, self.head_weight, targets, self.config.lm_head_chunk_tokens)

    def logits(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Full logits (B, T, V): for generation and tests, never for training."""
        return self.hidden_states(input_ids, cache) @ self.head_weight.t()

    @torch.no_grad()
    def generate_greedy(self, input_ids: torch.Tensor, max_new_tokens: int,
                        eos_token_id: int | None = None) -> list[int]:
        """Reference KV-cache greedy loop for one prompt (1, T); returns the new token ids."""
        cache = KVCache(self.config.n_layers)
        logits = self.logits(input_ids, cache)[:, -1]
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits.argmax(-1))
            out.append(token)
            if token == eos_token_id:
                break
            logits = self.logits(torch.tensor([[token]], device=input_ids.device), cache)[:, -1]
        return out


def build_model(cfg: ModelConfig, seed: int | None = None, device: str | torch.device = "cpu") -> DecoderLM:
    """A model on `device`; with a seed, initialised by the same per-parameter rule the shard store uses."""
    from perkunas_ray.model.init import init_parameters_

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
