"""Paged attention: the model's attention backend for one engine step, over keys/values in KV blocks."""

from __future__ import annotations

import dataclasses

import torch

from perkunas_ray.engine.cpu_kernels import DecodeAttention
from perkunas_ray.engine.kv_store import KVStore
from perkunas_ray.model.attention import masked_attention

# Key position given to padding blocks: later than any query, so the causal mask hides them.
PAD_POSITION = 2**62


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_positions: torch.Tensor,
                    query_positions: torch.Tensor, softcap: float = 0.0) -> torch.Tensor:
    """q (B, H, Tq, hd) over k/v (B, H_kv, Tk, hd) -> (B, H, Tq, hd).

    key_positions (B, Tk) and query_positions (B, Tq) are absolute token positions; a query attends
    to the keys at or before its own position. Padding, stale slots past the sequence's end and
    pruned blocks (absent from k) are therefore never attended.
    """
    return masked_attention(q, k, v, causal_mask(key_positions, query_positions), softcap)


def causal_mask(key_positions: torch.Tensor, query_positions: torch.Tensor) -> torch.Tensor:
    """(B, Tk) key and (B, Tq) query positions -> (B, 1, Tq, Tk), True where the key is at or before the query.

    The engine builds it once per step per attention group; every layer reuses it."""
    return key_positions[:, None, None, :] <= query_positions[:, None, :, None]


def block_key_positions(block_starts: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, K) start positions of the gathered blocks -> (B, K * block_size) positions of their slots."""
    offsets = torch.arange(block_size, device=block_starts.device)
    return (block_starts[:, :, None] + offsets).reshape(block_starts.shape[0], -1)


@dataclasses.dataclass
class AttentionGroup:
    """Sequences attended together: token rows [start, start + B*Tq) of the step's flat batch."""

    start: int
    num_queries: int  # Tq per sequence
    block_table: torch.Tensor  # (B, K) block ids (padding: block 0)
    # (B, 1, Tq, num_keys), True where a query may attend (built once per step, shared by the layers);
    # None when every one of the first num_keys gathered keys is visible (a lone decode, no soft-cap), or when the
    # decode kernel bounds the keys by decode_lengths instead.
    mask: torch.Tensor | None
    num_keys: int  # gathered key slots attended: K * block_size, or fewer when mask is None
    # (B,) keys each query sees (its position + 1), for decodes the C++ kernel reads in place (StepInputBuilder sets
    # it only when the kernel is loaded). None: the group gathers its blocks and runs SDPA.
    decode_lengths: torch.Tensor | None = None


@dataclasses.dataclass
class PagedAttention:
    """The attention backend of one engine step, whose N tokens run as one flat row (batch of 1).

    Each layer's new keys/values go to the KV store at `slots` (N,) (block_id * block_size + offset);
    then each group's queries attend over the blocks of its block table, the new tokens included. Groups with
    `decode_lengths` go to `decode_kernel`, which reads their keys and values in place; every other group gathers
    its blocks and runs SDPA.
    """

    kv_store: KVStore
    slots: torch.Tensor
    groups: list[AttentionGroup]
    decode_kernel: DecodeAttention | None = None

    def attend(self, layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softcap: float,
               dropout: float) -> torch.Tensor:
        """q (1, H, N, hd), k/v (1, H_kv, N, hd) -> (1, H, N, hd). Serving runs in eval mode: dropout is 0."""
        self.kv_store.write(layer_id, self.slots, k[0].transpose(0, 1), v[0].transpose(0, 1))
        heads, head_dim = q.shape[1], q.shape[3]
        outs = []
        for g in self.groups:
            b = g.block_table.shape[0]
            rows = q[0, :, g.start:g.start + b * g.num_queries]  # (H, B*Tq, hd)
            if g.decode_lengths is not None:
                assert self.decode_kernel is not None  # the builder sets decode_lengths only when it is loaded
                y = self.decode_kernel(rows.transpose(0, 1).contiguous(), self.kv_store.keys[layer_id],
                                       self.kv_store.values[layer_id], g.block_table.contiguous(), g.decode_lengths,
                                       head_dim ** -0.5)  # (B, H, hd)
                outs.append(y.transpose(0, 1))
                continue
            qg = rows.reshape(heads, b, g.num_queries, head_dim).transpose(0, 1)  # (B, H, Tq, hd)
            kg, vg = self.kv_store.gather(layer_id, g.block_table)
            if g.num_keys < kg.shape[2]:
                kg, vg = kg[:, :, :g.num_keys], vg[:, :, :g.num_keys]
            y = masked_attention(qg, kg, vg, g.mask, softcap)  # a None mask (never with a soft-cap): SDPA unmasked
            outs.append(y.transpose(0, 1).reshape(heads, b * g.num_queries, head_dim))  # (H, B*Tq, hd)
        return (torch.cat(outs, dim=1) if len(outs) > 1 else outs[0])[None]
