"""A step's flat model inputs (token ids, positions, KV slots) and attention groups, built in reused buffers."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from perkunas_ray.engine.block_pool import NULL_BLOCK_ID
from perkunas_ray.engine.paged_attention import PAD_POSITION, AttentionGroup, block_key_positions, causal_mask
from perkunas_ray.engine.scheduler import ScheduledRequest


class StepInputs(NamedTuple):
    input_ids: torch.Tensor  # (1, N)
    positions: torch.Tensor  # (1, N)
    slots: torch.Tensor  # (N,) block_id * block_size + offset of each token's KV
    max_position: int  # the largest of the positions
    groups: list[AttentionGroup]
    first_rows: list[int]  # per scheduled item (decodes first, then prefills): its first token row
    last_rows: list[int]  # ... and its last one


def _grown(buffer: np.ndarray, *shape: int) -> np.ndarray:
    """`buffer`, or a larger one when it cannot hold `shape`; sizes at least double, so growth is rare."""
    if all(have >= need for have, need in zip(buffer.shape, shape, strict=True)):
        return buffer
    return np.zeros([max(need, 2 * have) for have, need in zip(buffer.shape, shape, strict=True)], buffer.dtype)


class StepInputBuilder:
    """Lays out one step's tokens: decodes (one token each) as one padded attention group, then each prefill
    chunk as its own group.

    The flat arrays and block tables live in numpy buffers kept across steps and handed to torch without a
    copy on CPU, so a step costs a few slice assignments per request instead of building nested lists.
    The attention mask of each group is built here once per step, not once per layer. With `in_place_decodes`
    (the C++ decode kernel is loaded) decodes over unpruned blocks without soft-cap get each sequence's key count
    instead of a mask: the kernel reads their keys where they lie.
    """

    def __init__(self, block_size: int, device: torch.device, softcap: float, in_place_decodes: bool = False) -> None:
        self.block_size = block_size
        self.device = device
        self.softcap = softcap
        self.in_place_decodes = in_place_decodes
        self._ids = np.zeros(256, dtype=np.int64)
        self._positions = np.zeros(256, dtype=np.int64)
        self._slots = np.zeros(256, dtype=np.int64)
        self._table = np.zeros((16, 16), dtype=np.int64)
        self._starts = np.zeros((16, 16), dtype=np.int64)
        self._block_starts = np.arange(0, 16 * block_size, block_size, dtype=np.int64)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        """A torch view of a buffer slice (copied to the device off CPU). Valid until the next build."""
        tensor = torch.from_numpy(array)
        # On CPU, no `.to`: each tensor call is a few microseconds of a one-decode step, and releases the GIL.
        return tensor if self.device.type == "cpu" else tensor.to(self.device)

    def build(self, items: list[ScheduledRequest]) -> StepInputs:
        """`items` in row order: every decode first, then the prefill chunks."""
        bs = self.block_size
        num_tokens = sum(item.num_new_tokens for item in items)
        ids = self._ids = _grown(self._ids, num_tokens)
        positions = self._positions = _grown(self._positions, num_tokens)
        slots = self._slots = _grown(self._slots, num_tokens)
        first_rows, last_rows = [], []
        row = 0
        for item in items:
            start, n = item.num_computed_tokens, item.num_new_tokens
            end = start + n
            first_rows.append(row)
            if n == 1:  # a decode: no slicing, no ranges
                ids[row] = item.request.all_token_ids[start]
                positions[row] = start
                slots[row] = item.block_ids[start // bs] * bs + start % bs
            else:
                chunk = np.arange(start, end)
                ids[row:row + n] = item.request.all_token_ids[start:end]
                positions[row:row + n] = chunk
                slots[row:row + n] = np.asarray(item.block_ids, dtype=np.int64)[chunk // bs] * bs + chunk % bs
            row += n
            last_rows.append(row - 1)
        # Every item gets its own block-table row, so no group's table overwrites another's this step.
        width = max(-(-(item.num_computed_tokens + item.num_new_tokens) // bs) for item in items)
        self._table = _grown(self._table, len(items), width)
        self._starts = _grown(self._starts, len(items), width)
        if self._block_starts.shape[0] < width:
            self._block_starts = np.arange(0, 2 * width * bs, bs, dtype=np.int64)
        num_decodes = sum(1 for item in items if item.num_new_tokens == 1)
        groups: list[AttentionGroup] = []
        if num_decodes:
            groups.append(self._group(items[:num_decodes], 0, 0, positions))
        for index in range(num_decodes, len(items)):
            groups.append(self._group(items[index:index + 1], index, first_rows[index], positions))
        max_position = max(item.num_computed_tokens + item.num_new_tokens for item in items) - 1
        return StepInputs(self._tensor(ids[None, :num_tokens]), self._tensor(positions[None, :num_tokens]),
                          self._tensor(slots[:num_tokens]), max_position, groups, first_rows, last_rows)

    def _group(self, items: list[ScheduledRequest], first_item: int, start: int,
               positions: np.ndarray) -> AttentionGroup:
        """The block table of `items` (equal query counts; table rows from `first_item` on), padded with
        block 0, and their attention mask. `start`: the group's first token row."""
        bs = self.block_size
        num_queries = items[0].num_new_tokens
        lengths = [-(-(item.num_computed_tokens + num_queries) // bs) for item in items]  # blocks up to the end
        width = max(lengths)
        b = len(items)
        table = self._table[first_item:first_item + b]
        starts = self._starts[first_item:first_item + b]
        pruned = False
        for i, (item, n) in enumerate(zip(items, lengths, strict=True)):
            kept = item.block_ids[:n]
            if item.request.has_pruned and NULL_BLOCK_ID in kept:
                # Sink+window pruning: only the kept blocks are gathered, each at its own start position.
                pruned = True
                index = [j for j, block_id in enumerate(kept) if block_id != NULL_BLOCK_ID]
                kept = [kept[j] for j in index]
                starts[i, :len(kept)] = self._block_starts[index]
            else:
                starts[i, :len(kept)] = self._block_starts[:len(kept)]
            table[i, :len(kept)] = kept
            table[i, len(kept):width] = 0
            starts[i, len(kept):width] = PAD_POSITION
        end = items[0].num_computed_tokens + num_queries
        block_table = self._tensor(table[:b, :width])
        plain_decodes = num_queries == 1 and not pruned and self.softcap <= 0
        if plain_decodes and self.in_place_decodes:
            # Each sees the keys at positions 0..its own, in block-table order: the kernel needs their count only.
            return AttentionGroup(start, num_queries, block_table, None, width * bs,
                                  self._tensor(positions[start:start + b] + 1))
        if plain_decodes and b == 1:
            # One decode: its keys are exactly the first `end` slots, all visible; no mask to build or apply.
            return AttentionGroup(start, num_queries, block_table, None, end)
        query_positions = self._tensor(positions[start:start + b * num_queries].reshape(b, num_queries))
        key_positions = block_key_positions(self._tensor(starts[:b, :width]), bs)
        return AttentionGroup(start, num_queries, block_table, causal_mask(key_positions, query_positions), width * bs)
