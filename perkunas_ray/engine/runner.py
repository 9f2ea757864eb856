"""The model runner: one forward pass of the model over a step's scheduled tokens, attention paged."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from perkunas_ray.engine.block_pool import NULL_BLOCK_ID
from perkunas_ray.engine.kv_store import KVStore
from perkunas_ray.engine.logprobs import logprob_entries
from perkunas_ray.engine.paged_attention import (
    PAD_POSITION,
    AttentionGroup,
    PagedAttention,
    block_key_positions,
)
from perkunas_ray.engine.request import Request
from perkunas_ray.engine.scheduler import ScheduledRequest, SchedulerOutput
from perkunas_ray.model.decoder import DecoderLM


@dataclasses.dataclass
class PromptLogprobs:
    """Log-prob entries of the prompt tokens one prefill chunk predicts, from prompt position `first_position`."""

    request: Request
    first_position: int
    entries: list[dict[int, float]]


class RunnerOutput(NamedTuple):
    logits: torch.Tensor  # (S, V) fp32 of the S sampling requests, in `output.scheduled` order
    prompt_logprobs: list[PromptLogprobs]


def wants_prompt_logprobs(item: ScheduledRequest) -> bool:
    """Does this chunk hold prompt positions whose logits predict a prompt token, for a request asking for them?

    Only the first of `n` sequences computes them: its siblings share the prompt. Such a request skips the
    prefix cache (kv_cache_manager), as in vLLM, so every prompt position passes through here once.
    """
    request = item.request
    return (request.params.prompt_logprobs is not None and request.index == 0
            and item.num_computed_tokens < request.num_prompt_tokens - 1)


class ModelRunner:
    """Runs the DecoderLM's own forward over a flat batch, with a paged-attention backend."""

    def __init__(self, model: DecoderLM, kv_store: KVStore, block_size: int) -> None:
        self.model = model
        self.cfg = model.config
        self.kv_store = kv_store
        self.block_size = block_size
        self.device = model.head_weight.device

    def _kept_blocks(self, item: ScheduledRequest) -> tuple[list[int], list[int]]:
        """Block ids holding this sequence's KV after this step, and each block's start position."""
        end = item.num_computed_tokens + item.num_new_tokens
        ids, starts = [], []
        for j, block_id in enumerate(item.block_ids[:-(-end // self.block_size)]):
            if block_id != NULL_BLOCK_ID:
                ids.append(block_id)
                starts.append(j * self.block_size)
        return ids, starts

    def _group(self, items: list[ScheduledRequest], start: int) -> AttentionGroup:
        kept = [self._kept_blocks(item) for item in items]
        width = max(len(ids) for ids, _ in kept)
        table = [ids + [0] * (width - len(ids)) for ids, _ in kept]
        starts = [s + [PAD_POSITION] * (width - len(s)) for _, s in kept]
        queries = [list(range(it.num_computed_tokens, it.num_computed_tokens + it.num_new_tokens)) for it in items]
        return AttentionGroup(
            start=start, num_queries=items[0].num_new_tokens,
            block_table=torch.tensor(table, dtype=torch.long, device=self.device),
            key_positions=block_key_positions(torch.tensor(starts, dtype=torch.long, device=self.device),
                                              self.block_size),
            query_positions=torch.tensor(queries, dtype=torch.long, device=self.device))

    @torch.inference_mode()
    def execute(self, output: SchedulerOutput) -> RunnerOutput:
        """Compute the step's tokens, writing their KV; the logits of the sampling requests, and the prompt
        log-probs of the chunks that want them."""
        bs = self.block_size
        # Decodes (one token each) attend as one padded batch; each prefill chunk on its own.
        decodes = [it for it in output.scheduled if it.num_new_tokens == 1]
        prefills = [it for it in output.scheduled if it.num_new_tokens > 1]
        token_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        last_row: dict[int, int] = {}
        first_row: dict[int, int] = {}
        for item in decodes + prefills:
            start, end = item.num_computed_tokens, item.num_computed_tokens + item.num_new_tokens
            first_row[id(item)] = len(token_ids)
            token_ids.extend(item.request.all_token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(item.block_ids[p // bs] * bs + p % bs for p in range(start, end))
            last_row[id(item)] = len(token_ids) - 1
        groups: list[AttentionGroup] = []
        if decodes:
            groups.append(self._group(decodes, 0))
        row = len(decodes)
        for item in prefills:
            groups.append(self._group([item], row))
            row += item.num_new_tokens

        dev = self.device
        input_ids = torch.tensor(token_ids, dtype=torch.long, device=dev)[None]  # (1, N)
        attn = PagedAttention(self.kv_store, torch.tensor(slots, dtype=torch.long, device=dev), groups)
        h = self.model.hidden_states(input_ids, torch.tensor(positions, device=dev)[None], attn)[0]  # (N, D)
        prompt = [self._prompt_logprobs(item, h, first_row[id(item)])
                  for item in output.scheduled if wants_prompt_logprobs(item)]
        rows = [last_row[id(item)] for item in output.scheduled if item.samples]
        if not rows:
            return RunnerOutput(torch.empty(0, self.cfg.vocab_size, device=dev), prompt)
        picked = h.index_select(0, torch.tensor(rows, dtype=torch.long, device=dev))
        return RunnerOutput((picked @ self.model.head_weight.t()).float(), prompt)

    def _prompt_logprobs(self, item: ScheduledRequest, h: torch.Tensor, first_row: int) -> PromptLogprobs:
        """Raw log-probs (no penalty, no temperature: what the model says, as vLLM's default) of the prompt
        tokens that this chunk's positions predict: position p's logits score prompt token p + 1."""
        request = item.request
        start = item.num_computed_tokens
        end = min(start + item.num_new_tokens, request.num_prompt_tokens - 1)
        logits = h[first_row:first_row + end - start] @ self.model.head_weight.t()  # (end - start, V)
        log_probs = logits.float().log_softmax(-1)
        targets = request.all_token_ids[start + 1:end + 1]
        return PromptLogprobs(request, start + 1, logprob_entries(log_probs, targets,
                                                                     request.params.prompt_logprobs or 0))
