"""The model as an ordered list of stream shards: embedding, groups of blocks, final norm + head.

Shards are the unit of residency, transfer and update of the streaming runtime. Each shard module
keeps the full model's parameter names, so shard state dicts merge into the model's with no renaming.
With tied embeddings the head shard owns no head weight: it borrows the embedding's, passed in.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from perkunas_ray.config import ModelConfig
from perkunas_ray.model.layers import Block, RMSNorm, rope_cos_sin
from perkunas_ray.model.loss import chunked_cross_entropy

ShardKind = Literal["embed", "blocks", "head"]
EMBED_WEIGHT = "model.embed_tokens.weight"


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    shard_id: int
    kind: ShardKind
    layer_ids: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        if self.kind == "blocks":
            return f"shard_{self.shard_id:03d}_layers_{self.layer_ids[0]}-{self.layer_ids[-1]}"
        return f"shard_{self.shard_id:03d}_{self.kind}"


def stream_shard_specs(cfg: ModelConfig) -> list[ShardSpec]:
    specs = [ShardSpec(0, "embed")]
    for start in range(0, cfg.n_layers, cfg.layers_per_shard):
        layer_ids = tuple(range(start, min(start + cfg.layers_per_shard, cfg.n_layers)))
        specs.append(ShardSpec(len(specs), "blocks", layer_ids))
    specs.append(ShardSpec(len(specs), "head"))
    return specs


class _Body(nn.Module):
    """Holds a shard's modules under the `model.` prefix so names match the full model's."""


class EmbedShard(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.model = _Body()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T) -> hidden (B, T, D)."""
        return self.dropout(self.model.embed_tokens(input_ids))


class BlocksShard(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_ids: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = _Body()
        self.model.layers = nn.ModuleDict({str(i): Block(cfg) for i in layer_ids})

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, D) -> hidden (B, T, D); positions 0..T-1 (training never uses a cache)."""
        b, t, _ = hidden.shape
        positions = torch.arange(t, device=hidden.device).expand(b, t)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, hidden.dtype)
        for block in self.model.layers.values():
            hidden = block(hidden, cos, sin)
        return hidden


class HeadShard(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = _Body()
        self.model.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def _weight(self, tied_weight: torch.Tensor | None) -> torch.Tensor:
        if self.lm_head is not None:
            return self.lm_head.weight
        if tied_weight is None:
            raise ValueError("tied embeddings: the head shard needs the embedding weight passed as tied_weight")
        return tied_weight

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor,
                tied_weight: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (B, T, D), targets (B, T) -> mean cross-entropy (scalar)."""
        return chunked_cross_entropy(self.model.norm(hidden), self._weight(tied_weight), targets,
                                     self.cfg.lm_head_chunk_tokens)


def build_shard(cfg: ModelConfig, spec: ShardSpec) -> nn.Module:
    if spec.kind == "embed":
        return EmbedShard(cfg)
    if spec.kind == "blocks":
        return BlocksShard(cfg, spec.layer_ids)
    return HeadShard(cfg)


def shard_parameter_shapes(cfg: ModelConfig, spec: ShardSpec) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the parameters a shard owns (meta device, no memory)."""
    with torch.device("meta"):
        module = build_shard(cfg, spec)
    return {name: tuple(p.shape) for name, p in module.named_parameters()}


def shard_num_bytes(cfg: ModelConfig, spec: ShardSpec, bytes_per_param: int = 4) -> int:
    return sum(int(torch.Size(s).numel()) for s in shard_parameter_shapes(cfg, spec).values()) * bytes_per_param


def split_state_dict(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A full-model state dict -> {shard name: that shard's tensors}."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for spec in stream_shard_specs(cfg):
        out[spec.name] = {name: state[name] for name in shard_parameter_shapes(cfg, spec)}
    return out
