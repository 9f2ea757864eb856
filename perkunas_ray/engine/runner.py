"""The model runner: one forward pass over a step's scheduled tokens with paged KV; logits of sampling rows."""

from __future__ import annotations

import dataclasses

import torch

from perkunas_ray.engine.block_pool import NULL_BLOCK_ID
from perkunas_ray.engine.kv_store import KVStore
from perkunas_ray.engine.paged_attention import PAD_POSITION, block_key_positions, paged_attention
from perkunas_ray.engine.scheduler import ScheduledRequest, SchedulerOutput
from perkunas_ray.model.decoder import DecoderLM
from perkunas_ray.model.layers import rope_cos_sin


@dataclasses.dataclass
class _AttentionGroup:
    """Sequences attended together: token rows [start, start + B*Tq) of the flat batch."""

    start: int
    num_queries: int  # Tq per sequence
    block_table: torch.Tensor  # (B, K) block ids (padding: block 0)
    key_positions: torch.Tensor  # (B, K * block_size)
    query_positions: torch.Tensor  # (B, Tq)


class ModelRunner:
    """Runs the DecoderLM's own submodules over a flat batch; only attention is paged."""

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

    def _group(self, items: list[ScheduledRequest], start: int) -> _AttentionGroup:
        kept = [self._kept_blocks(item) for item in items]
        width = max(len(ids) for ids, _ in kept)
        table = [ids + [0] * (width - len(ids)) for ids, _ in kept]
        starts = [s + [PAD_POSITION] * (width - len(s)) for _, s in kept]
        queries = [list(range(it.num_computed_tokens, it.num_computed_tokens + it.num_new_tokens)) for it in items]
        return _AttentionGroup(
            start=start, num_queries=items[0].num_new_tokens,
            block_table=torch.tensor(table, dtype=torch.long, device=self.device),
            key_positions=block_key_positions(torch.tensor(starts, dtype=torch.long, device=self.device),
                                              self.block_size),
            query_positions=torch.tensor(queries, dtype=torch.long, device=self.device))

    @torch.inference_mode()
    def execute(self, output: SchedulerOutput) -> torch.Tensor:
        """Compute the step's tokens, writing their KV; logits (S, V) fp32 of the S sampling requests,
        in `output.scheduled` order."""
        bs = self.block_size
        # Decodes (one token each) attend as one padded batch; each prefill chunk on its own.
        decodes = [it for it in output.scheduled if it.num_new_tokens == 1]
        prefills = [it for it in output.scheduled if it.num_new_tokens > 1]
        token_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        last_row: dict[int, int] = {}
        for item in decodes + prefills:
            start, end = item.num_computed_tokens, item.num_computed_tokens + item.num_new_tokens
            token_ids.extend(item.request.all_token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(item.block_ids[p // bs] * bs + p % bs for p in range(start, end))
            last_row[id(item)] = len(token_ids) - 1
        groups: list[_AttentionGroup] = []
        if decodes:
            groups.append(self._group(decodes, 0))
        row = len(decodes)
        for item in prefills:
            groups.append(self._group([item], row))
            row += item.num_new_tokens

        dev = self.device
        input_ids = torch.tensor(token_ids, dtype=torch.long, device=dev)
        slot_tensor = torch.tensor(slots, dtype=torch.long, device=dev)
        body = self.model.model
        x = body.embed_tokens(input_ids)[None]  # (1, N, D)
        cos, sin = rope_cos_sin(torch.tensor(positions, device=dev)[None], self.cfg.head_dim,
                                self.cfg.rope_theta, x.dtype)
        n_tokens = input_ids.shape[0]
        for layer_id, block in enumerate(body.layers):
            attn = block.self_attn
            q, k, v = attn.project_qkv(block.input_layernorm(x), cos, sin)  # (1, H, N, hd), (1, H_kv, N, hd)
            self.kv_store.write(layer_id, slot_tensor, k[0].transpose(0, 1), v[0].transpose(0, 1))
            outs = []
            for g in groups:
                b = g.block_table.shape[0]
                rows = q[0, :, g.start:g.start + b * g.num_queries]  # (H, B*Tq, hd)
                qg = rows.reshape(rows.shape[0], b, g.num_queries, rows.shape[-1]).transpose(0, 1)
                kg, vg = self.kv_store.gather(layer_id, g.block_table)
                y = paged_attention(qg, kg, vg, g.key_positions, g.query_positions, attn.softcap)
                outs.append(y.transpose(1, 2).reshape(b * g.num_queries, -1))  # (B*Tq, H*hd)
            y = torch.cat(outs) if len(outs) > 1 else outs[0]
            x = x + attn.o_proj(y.reshape(1, n_tokens, -1))
            x = x + block.mlp(block.post_attention_layernorm(x))
        h = body.norm(x)[0]  # (N, D)
        rows = [last_row[id(item)] for item in output.scheduled if item.samples]
        if not rows:
            return torch.empty(0, self.cfg.vocab_size, device=dev)
        picked = h.index_select(0, torch.tensor(rows, dtype=torch.long, device=dev))
        return (picked @ self.model.head_weight.t()).float()
