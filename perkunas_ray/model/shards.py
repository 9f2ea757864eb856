"""The model as an ordered list of stream shards: embedding, groups of blocks, final norm + head.

Shards are the unit of residency, transfer and update of the streaming runtime. A shard module is
the DecoderLM itself holding only its part, so it keeps the full model's parameter names (shard state
dicts merge into the model's with no renaming) and runs the model's own forward. With tied embeddings
the head shard owns no head weight: it borrows the embedding's, passed in as tied_weight.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from perkunas_ray.config import ModelConfig
from perkunas_ray.model.decoder import DecoderLM

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


def build_shard(cfg: ModelConfig, spec: ShardSpec) -> DecoderLM:
    """The model's own module holding only `spec`'s part, so a shard's forward is the model's forward."""
    return DecoderLM(cfg, layer_ids=spec.layer_ids, embed=spec.kind == "embed", head=spec.kind == "head")


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
