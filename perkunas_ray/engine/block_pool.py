"""The pool of KV blocks: reference counts, a free queue evicting cached blocks LRU-first, the hash map."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from perkunas_ray.engine.interface import KVEvent

# A block-table entry whose block was pruned away (sink+window): the position exists, its KV does not.
NULL_BLOCK_ID = -1


class KVBlock:
    __slots__ = ("block_id", "ref_count", "block_hash")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.block_hash: int | None = None  # set while the block is in the prefix cache

    def __repr__(self) -> str:
        return f"KVBlock({self.block_id}, ref={self.ref_count}, hash={self.block_hash})"


class BlockPool:
    """Block ids 0..num_blocks-1. A block is in use (ref_count > 0) or in the free queue.

    The free queue is ordered by eviction priority: `allocate` takes from the front, `free` appends at
    the back, so a cached block that was released longest ago is evicted first (LRU). A block in the
    free queue may still hold a cached prefix (`block_hash` set) and be revived by `touch`.
    """

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be > 0, got {num_blocks}")
        self.num_blocks = num_blocks
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._hash_to_block_id: dict[int, int] = {}
        self._events: list[KVEvent] = []

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached_free_blocks(self) -> int:
        return sum(1 for block_id in self._free if self.blocks[block_id].block_hash is not None)

    def get_cached_block(self, block_hash: int) -> int | None:
        return self._hash_to_block_id.get(block_hash)

    def allocate(self, num_blocks: int) -> list[int]:
        """Take `num_blocks` from the front of the free queue, evicting any cached prefix they hold."""
        if num_blocks > len(self._free):
            raise RuntimeError(f"cannot allocate {num_blocks} blocks, {len(self._free)} free")
        block_ids: list[int] = []
        removed: list[int] = []
        for _ in range(num_blocks):
            block_id, _ = self._free.popitem(last=False)
            block = self.blocks[block_id]
            if block.block_hash is not None:
                removed.append(block.block_hash)
                del self._hash_to_block_id[block.block_hash]
                block.block_hash = None
            block.ref_count = 1
            block_ids.append(block_id)
        if removed:
            self._events.append(KVEvent("removed", removed))
        return block_ids

    def touch(self, block_ids: Iterable[int]) -> None:
        """Take a reference on (cached) blocks; a free one leaves the free queue."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1

    def free(self, block_ids: Iterable[int]) -> None:
        """Drop a reference; a block reaching 0 goes to the back of the free queue, keeping its hash."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block_id} freed more often than allocated")
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None

    def cache_blocks(self, block_ids: list[int], block_hashes: list[int]) -> None:
        """Register full blocks under their chained hashes. A hash already cached keeps its first block."""
        stored: list[int] = []
        for block_id, block_hash in zip(block_ids, block_hashes, strict=True):
            block = self.blocks[block_id]
            if block.block_hash is not None or block_hash in self._hash_to_block_id:
                continue
            block.block_hash = block_hash
            self._hash_to_block_id[block_hash] = block_id
            stored.append(block_hash)
        if stored:
            self._events.append(KVEvent("stored", stored))

    def reset_prefix_cache(self) -> None:
        """Forget every cached hash (blocks in use stay allocated, just no longer shareable)."""
        for block in self.blocks:
            block.block_hash = None
        self._hash_to_block_id.clear()
        self._events.append(KVEvent("cleared", []))

    def drain_events(self) -> list[KVEvent]:
        events, self._events = self._events, []
        return events
