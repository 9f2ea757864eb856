"""Test references over the product's model: a plain KV-cache greedy loop that the engine's output must equal."""

from __future__ import annotations

import torch

from perkunas_ray.model.attention import KVCache
from perkunas_ray.model.decoder import DecoderLM


@torch.no_grad()
def generate_greedy(model: DecoderLM, input_ids: torch.Tensor, max_new_tokens: int,
                    eos_token_id: int | None = None) -> list[int]:
    """Greedy decoding of one prompt (1, T) through DecoderLM.logits with its KV cache; the new token ids."""
    cache = KVCache(model.config.n_layers)
    logits = model.logits(input_ids, cache)[:, -1]
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(logits.argmax(-1))
        out.append(token)
        if token == eos_token_id:
            break
        logits = model.logits(torch.tensor([[token]], device=input_ids.device), cache)[:, -1]
    return out
