"""Per-request block tables over the block pool: prefix-cache lookups, `allocate_slots`, `free`, pruning."""

from __future__ import annotations

from collections.abc import Sequence

from perkunas_ray.engine.block_pool import NULL_BLOCK_ID, BlockPool
from perkunas_ray.engine.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    """Which blocks hold which request's KV. Only full blocks are cached (keyed by chained hashes)."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.block_pool = BlockPool(num_blocks)
        self.req_to_block_ids: dict[str, list[int]] = {}
        self._req_to_num_slot_tokens: dict[str, int] = {}  # tokens that have a slot (computed or this step)
        self._req_to_num_cached_blocks: dict[str, int] = {}  # leading blocks already offered to the cache
        self.prefix_cache_queries_tokens = 0
        self.prefix_cache_hits_tokens = 0

    @property
    def num_blocks(self) -> int:
        return self.block_pool.num_blocks

    def block_ids(self, request_id: str) -> list[int]:
        return self.req_to_block_ids.get(request_id, [])

    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """Leading blocks of `request` whose KV already exists, and how many tokens they cover.

        At least one token is always left to compute: its logits give the next token. A request that wants
        its prompt's log-probs gets no hit (vLLM does the same): they need the logits of every prompt position.
        """
        if request.params.prompt_logprobs is not None and request.index == 0:
            return [], 0
        max_blocks = (request.num_tokens - 1) // self.block_size
        if self.enable_prefix_caching:
            block_ids: list[int] = []
            for block_hash in request.update_block_hashes(self.block_size)[:max_blocks]:
                block_id = self.block_pool.get_cached_block(block_hash)
                if block_id is None:
                    break
                block_ids.append(block_id)
            return block_ids, len(block_ids) * self.block_size
        source = request.share_prefix_with
        if source is None or source not in self.req_to_block_ids:
            return [], 0
        # Prefix caching off: an n>1 sibling shares the full prompt blocks its source has slots for
        # (the source writes them earlier in the same step, before any attention reads them).
        max_blocks = min(max_blocks, request.num_prompt_tokens // self.block_size,
                         self._req_to_num_slot_tokens[source] // self.block_size)
        block_ids = []
        for block_id in self.req_to_block_ids[source][:max_blocks]:
            if block_id == NULL_BLOCK_ID:
                break
            block_ids.append(block_id)
        return block_ids, len(block_ids) * self.block_size

    def record_prefix_lookup(self, num_query_tokens: int, num_hit_tokens: int) -> None:
        self.prefix_cache_queries_tokens += num_query_tokens
        self.prefix_cache_hits_tokens += num_hit_tokens

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_block_ids: Sequence[int] = ()) -> list[int] | None:
        """Give `request` slots for `num_new_tokens` more tokens after its computed ones (plus the
        `new_computed_block_ids` prefix hits, on first scheduling). Returns the newly allocated block
        ids, or None (and changes nothing) when the pool cannot supply them.
        """
        request_id = request.request_id
        block_ids = self.req_to_block_ids.get(request_id, [])
        num_computed_tokens = request.num_computed_tokens + len(new_computed_block_ids) * self.block_size
        num_slot_tokens = num_computed_tokens + num_new_tokens
        num_new_blocks = cdiv(num_slot_tokens, self.block_size) - len(block_ids) - len(new_computed_block_ids)
        pool = self.block_pool
        # Hit blocks sitting in the free queue leave it when touched, so they count against it.
        num_revived = sum(1 for b in new_computed_block_ids if pool.blocks[b].ref_count == 0)
        if max(num_new_blocks, 0) + num_revived > pool.num_free_blocks:
            return None
        pool.touch(new_computed_block_ids)
        new_block_ids = pool.allocate(max(num_new_blocks, 0))
        block_ids = block_ids + list(new_computed_block_ids) + new_block_ids
        self.req_to_block_ids[request_id] = block_ids
        self._req_to_num_slot_tokens[request_id] = num_slot_tokens
        if self.enable_prefix_caching and not request.has_pruned:
            # Blocks full once this step's tokens are written are cacheable now: tokens are known, and
            # the runner writes a step's KV before any attention of that step reads it.
            num_full = num_slot_tokens // self.block_size
            first = self._req_to_num_cached_blocks.get(request_id, 0)
            if num_full > first:
                hashes = request.update_block_hashes(self.block_size)
                pool.cache_blocks(block_ids[first:num_full], hashes[first:num_full])
                self._req_to_num_cached_blocks[request_id] = num_full
        return new_block_ids

    def free(self, request: Request) -> None:
        """Release the request's blocks, tail first, so its last blocks are evicted before its prefix."""
        block_ids = self.req_to_block_ids.pop(request.request_id, [])
        self._req_to_num_slot_tokens.pop(request.request_id, None)
        self._req_to_num_cached_blocks.pop(request.request_id, None)
        self.block_pool.free(b for b in reversed(block_ids) if b != NULL_BLOCK_ID)

    def prune(self, request: Request, sink_tokens: int, window_tokens: int) -> list[int]:
        """StreamingLLM: free the blocks lying wholly between the first `sink_tokens` and the last
        `window_tokens` computed tokens; their table entries become NULL_BLOCK_ID. Returns freed ids.

        Positions are not re-indexed: RoPE positions keep growing with the sequence (StreamingLLM's
        simple variant), so the cached keys stay valid and nothing is re-rotated; the attention mask
        is by absolute position, and the pruned blocks are simply absent from the gathered keys.
        """
        block_ids = self.req_to_block_ids.get(request.request_id)
        if not block_ids:
            return []
        first = cdiv(sink_tokens, self.block_size)  # blocks holding a sink token stay
        end = (request.num_computed_tokens - window_tokens) // self.block_size  # blocks ending before the window
        freed = [block_ids[j] for j in range(first, max(end, first)) if block_ids[j] != NULL_BLOCK_ID]
        if not freed:
            return []
        for j in range(first, end):
            block_ids[j] = NULL_BLOCK_ID
        request.has_pruned = True
        self.block_pool.free(reversed(freed))
        return freed

    def reset_prefix_cache(self) -> None:
        self.block_pool.reset_prefix_cache()
        self._req_to_num_cached_blocks = {rid: len(b) for rid, b in self.req_to_block_ids.items()}
