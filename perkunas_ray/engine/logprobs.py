"""Log-probability entries as the engine reports them: per position, the chosen token's plus the top k."""

from __future__ import annotations

import torch


def logprob_entries(log_probs: torch.Tensor, token_ids: list[int], k: int) -> list[dict[int, float]]:
    """One {token_id: logprob} per row of `log_probs` (R, V): the row's token first, then the k most likely
    (vLLM's order; a token among the top k appears once)."""
    rows = torch.arange(len(token_ids), device=log_probs.device)
    chosen = log_probs[rows, torch.tensor(token_ids, dtype=torch.long, device=log_probs.device)].tolist()
    entries = [{token: lp} for token, lp in zip(token_ids, chosen, strict=True)]
    if k:
        top = torch.topk(log_probs, min(k, log_probs.shape[-1]), dim=-1)
        for entry, ids, values in zip(entries, top.indices.tolist(), top.values.tolist(), strict=True):
            entry.update((i, v) for i, v in zip(ids, values, strict=True) if i not in entry)
    return entries
