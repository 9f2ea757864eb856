"""Block pool, KV manager and scheduler on tiny specs: exact block ids, reference counts, eviction order."""

from __future__ import annotations

import pytest

from perkunas_ray.engine.block_hash import block_hashes, hash_block
from perkunas_ray.engine.block_pool import NULL_BLOCK_ID, BlockPool
from perkunas_ray.engine.interface import KVPolicy, SamplingParams
from perkunas_ray.engine.kv_cache_manager import KVCacheManager
from perkunas_ray.engine.request import Request, RequestStatus
from perkunas_ray.engine.scheduler import Scheduler
from perkunas_ray.errors import ConfigError

pytestmark = pytest.mark.unit



def free_block_ids(pool: BlockPool) -> list[int]:
    """The pool's free queue, front (next to evict) first."""
    return list(pool._free)

def refs(pool: BlockPool) -> list[int]:
    return [b.ref_count for b in pool.blocks]


def test_block_hashes_are_chained_stable_and_full_blocks_only() -> None:
    tokens = list(range(10))
    hashes = block_hashes(tokens, 4)
    assert len(hashes) == 2  # the trailing 2 tokens make no full block
    assert hashes[0] == hash_block(0, [0, 1, 2, 3])
    assert hashes[1] == hash_block(hashes[0], [4, 5, 6, 7])
    # Same block content under another parent hashes differently (the chain carries the prefix).
    assert block_hashes([9, 9, 9, 9] + tokens[4:8], 4)[1] != hashes[1]
    # Stable across processes: a fixed value, not Python's salted hash().
    assert hash_block(0, [1, 2, 3]) == hash_block(0, [1, 2, 3])
    assert 0 <= hashes[0] < 2**64
    request = Request("r", tokens)
    assert request.update_block_hashes(4) == hashes


def test_block_pool_allocates_front_frees_to_back_and_evicts_lru() -> None:
    pool = BlockPool(4)
    assert pool.allocate(2) == [0, 1]
    assert refs(pool) == [1, 1, 0, 0]
    pool.cache_blocks([0, 1], [100, 101])
    assert pool.drain_events()[0].block_hashes == [100, 101]
    pool.free([1])
    pool.free([0])
    assert free_block_ids(pool) == [2, 3, 1, 0]
    assert pool.num_cached_free_blocks == 2
    # Uncached blocks first, then the cached block released longest ago.
    assert pool.allocate(3) == [2, 3, 1]
    events = pool.drain_events()
    assert [(e.kind, e.block_hashes) for e in events] == [("removed", [101])]
    assert pool.get_cached_block(101) is None and pool.get_cached_block(100) == 0
    # A cached free block is revived by touch and leaves the free queue.
    pool.touch([0])
    assert refs(pool) == [1, 1, 1, 1] and pool.num_free_blocks == 0
    with pytest.raises(RuntimeError):
        pool.allocate(1)
    pool.free([0])
    with pytest.raises(RuntimeError):
        pool.free([0])


def test_prefix_hits_share_blocks_and_frees_go_tail_first() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4)
    pool = kv.block_pool
    a = Request("a", list(range(10)))
    assert kv.get_computed_blocks(a) == ([], 0)
    assert kv.allocate_slots(a, 10) == [0, 1, 2]
    h = block_hashes(list(range(10)), 4)
    assert [(e.kind, e.block_hashes) for e in pool.drain_events()] == [("stored", h)]
    a.num_computed_tokens = 10

    b = Request("b", list(range(8)) + [100, 101, 102])
    hit_ids, num_hit = kv.get_computed_blocks(b)
    assert (hit_ids, num_hit) == ([0, 1], 8)
    assert kv.allocate_slots(b, 3, hit_ids) == [3]
    assert kv.block_ids("b") == [0, 1, 3]
    assert refs(pool) == [2, 2, 1, 1, 0, 0, 0, 0]

    kv.free(a)
    assert refs(pool) == [1, 1, 0, 1, 0, 0, 0, 0]
    assert free_block_ids(pool) == [4, 5, 6, 7, 2]
    kv.free(b)
    assert free_block_ids(pool) == [4, 5, 6, 7, 2, 3, 1, 0]  # b's tail first: its prefix is evicted last
    assert pool.num_cached_free_blocks == 2

    # A third request revives the cached prefix out of the free queue.
    c = Request("c", list(range(8)) + [7])
    hit_ids, num_hit = kv.get_computed_blocks(c)
    assert (hit_ids, num_hit) == ([0, 1], 8)
    assert kv.allocate_slots(c, 1, hit_ids) == [4]
    assert refs(pool)[:5] == [1, 1, 0, 0, 1]
    assert free_block_ids(pool) == [5, 6, 7, 2, 3]


def test_full_prompt_hit_leaves_one_token_to_compute() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4)
    a = Request("a", list(range(8)))
    kv.allocate_slots(a, 8)
    same = Request("same", list(range(8)))
    assert kv.get_computed_blocks(same) == ([0], 4)  # the last block is recomputed: its logits are needed


def test_allocation_failure_changes_nothing_and_counts_revived_blocks() -> None:
    kv = KVCacheManager(num_blocks=3, block_size=4)
    a = Request("a", list(range(8)))
    kv.allocate_slots(a, 8)
    a.num_computed_tokens = 8
    kv.free(a)  # blocks 0 and 1 cached, free queue [2, 1, 0]
    b = Request("b", list(range(8)) + list(range(50, 60)))  # hits block 0 and 1, needs 3 more blocks
    hit_ids, _ = kv.get_computed_blocks(b)
    assert hit_ids == [0, 1]
    assert kv.allocate_slots(b, 10, hit_ids) is None  # 3 new + 2 revived > 3 free
    assert refs(kv.block_pool) == [0, 0, 0] and kv.block_ids("b") == []
    assert free_block_ids(kv.block_pool) == [2, 1, 0]


def test_prefix_caching_off_caches_nothing() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4, enable_prefix_caching=False)
    a = Request("a", list(range(8)))
    kv.allocate_slots(a, 8)
    assert kv.get_computed_blocks(Request("b", list(range(9)))) == ([], 0)
    assert kv.block_pool.drain_events() == []


def test_siblings_share_full_prompt_blocks_without_prefix_caching() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    first = Request("r/0", list(range(10)))
    second = Request("r/1", list(range(10)), share_prefix_with="r/0", index=1)
    kv.allocate_slots(first, 10)
    hit_ids, num_hit = kv.get_computed_blocks(second)
    assert (hit_ids, num_hit) == ([0, 1], 8)
    assert kv.allocate_slots(second, 2, hit_ids) == [3]
    assert refs(kv.block_pool)[:4] == [2, 2, 1, 1]


def test_prune_frees_blocks_between_sink_and_window() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4)
    r = Request("r", list(range(24)))
    kv.allocate_slots(r, 24)
    r.num_computed_tokens = 24
    assert kv.prune(r, sink_tokens=4, window_tokens=8) == [1, 2, 3]
    assert kv.block_ids("r") == [0, NULL_BLOCK_ID, NULL_BLOCK_ID, NULL_BLOCK_ID, 4, 5]
    assert r.has_pruned
    assert refs(kv.block_pool) == [1, 0, 0, 0, 1, 1, 0, 0]
    assert kv.prune(r, 4, 8) == []  # nothing new to drop
    kv.free(r)
    assert kv.block_pool.num_free_blocks == 8


def _policy(**kw: object) -> KVPolicy:
    base: dict[str, object] = {"block_size": 4, "max_num_batched_tokens": 64, "max_num_seqs": 4}
    base.update(kw)
    return KVPolicy(**base).validate()  # type: ignore[arg-type]


def _sample(sched: Scheduler, out, token: int = 7) -> None:  # type: ignore[no-untyped-def]
    """Stand-in for runner + sampler: advance, then append a token to every request that samples."""
    sched.update_from_output(out)
    for item in out.scheduled:
        if item.samples:
            item.request.append_output_token(token)


def test_scheduler_preempts_latest_by_recompute_and_reuses_its_cached_prefix() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4)
    sched = Scheduler(_policy(), kv)
    r1, r2 = Request("r1", [1, 2, 3, 4, 5, 6]), Request("r2", [11, 12, 13, 14, 15, 16])
    sched.add_request(r1)
    sched.add_request(r2)
    out = sched.schedule()
    assert [(s.request.request_id, s.num_new_tokens, s.block_ids) for s in out.scheduled] == \
        [("r1", 6, [0, 1]), ("r2", 6, [2, 3])]
    _sample(sched, out)
    for _ in range(2):  # decode positions 6 and 7: still two blocks each
        out = sched.schedule()
        assert [s.num_new_tokens for s in out.scheduled] == [1, 1] and not out.preempted_request_ids
        _sample(sched, out)
    out = sched.schedule()  # r1 needs a third block: r2 (latest admitted) is preempted, tail block first
    assert out.preempted_request_ids == ["r2"]
    assert [(s.request.request_id, s.block_ids) for s in out.scheduled] == [("r1", [0, 1, 3])]
    assert r2.status == RequestStatus.PREEMPTED and r2.num_computed_tokens == 0
    assert list(sched.waiting) == [r2] and sched.num_preemptions == 1
    assert refs(kv.block_pool) == [1, 1, 0, 1]
    assert kv.block_pool.blocks[2].block_hash is not None  # r2's first block is still cached
    _sample(sched, out)
    out = sched.schedule()  # r2 (9 tokens) needs 1 revived + 2 new blocks, only block 2 is free: it waits
    assert [s.request.request_id for s in out.scheduled] == ["r1"] and list(sched.waiting) == [r2]
    _sample(sched, out)
    sched.finish_request("r1", RequestStatus.FINISHED_STOPPED)
    assert free_block_ids(kv.block_pool) == [2, 3, 1, 0]
    out = sched.schedule()  # recompute r2: its first block is a prefix hit, the rest is new
    assert [(s.request.request_id, s.num_computed_tokens, s.num_new_tokens, s.block_ids)
            for s in out.scheduled] == [("r2", 4, 5, [2, 3, 1])]
    assert r2.num_cached_tokens == 0  # what the prompt got from the cache on first admission
    assert kv.prefix_cache_hits_tokens == 4


def test_scheduler_chunks_prefill_under_token_budget_and_puts_running_first() -> None:
    kv = KVCacheManager(num_blocks=16, block_size=4, enable_prefix_caching=False)
    sched = Scheduler(_policy(max_num_batched_tokens=8), kv)
    long = Request("long", list(range(20)))
    sched.add_request(long)
    chunks = []
    while not long.output_token_ids:
        out = sched.schedule()
        chunks.append([(s.num_computed_tokens, s.num_new_tokens, s.samples) for s in out.scheduled])
        _sample(sched, out)
    assert chunks == [[(0, 8, False)], [(8, 8, False)], [(16, 4, True)]]
    late = Request("late", list(range(30, 50)))
    sched.add_request(late)
    out = sched.schedule()
    assert [(s.request.request_id, s.num_new_tokens) for s in out.scheduled] == [("long", 1), ("late", 7)]
    assert out.num_batched_tokens == 8


def test_scheduler_respects_max_num_seqs_and_abort_frees_blocks() -> None:
    kv = KVCacheManager(num_blocks=16, block_size=4)
    sched = Scheduler(_policy(max_num_seqs=2), kv)
    for i in range(3):
        sched.add_request(Request(f"r{i}", [i * 10 + j for j in range(5)]))
    out = sched.schedule()
    assert [s.request.request_id for s in out.scheduled] == ["r0", "r1"]
    assert sched.finish_request("r0", RequestStatus.FINISHED_ABORTED) is not None
    assert sched.finish_request("r2", RequestStatus.FINISHED_ABORTED) is not None  # waiting: no blocks yet
    assert sched.finish_request("nope", RequestStatus.FINISHED_ABORTED) is None
    sched.finish_request("r1", RequestStatus.FINISHED_ABORTED)
    assert kv.block_pool.num_free_blocks == 16 and sched.num_unfinished == 0


def test_scheduler_prunes_with_sink_window_policy() -> None:
    kv = KVCacheManager(num_blocks=16, block_size=4)
    sched = Scheduler(_policy(pruning="sink_window", sink_tokens=4, window_tokens=8), kv)
    r = Request("r", list(range(6)))
    sched.add_request(r)
    max_used = 0
    for _ in range(40):
        out = sched.schedule()
        _sample(sched, out)
        max_used = max(max_used, kv.block_pool.num_used_blocks)
    assert r.num_tokens == 46
    # sink block + window (8 tokens = 2 blocks, plus one partially filled) + the block being written
    assert max_used <= 1 + 2 + 1 + 1
    assert kv.block_ids("r")[1] == NULL_BLOCK_ID


def test_policy_and_params_validation_name_the_field() -> None:
    with pytest.raises(ConfigError, match="kv_policy.kv_dtype"):
        KVPolicy(kv_dtype="fp4").validate()
    with pytest.raises(ConfigError, match="kv_policy.num_blocks"):
        KVPolicy(num_blocks=4, kv_budget_bytes=100).validate()
    with pytest.raises(ConfigError, match="kv_policy.window_tokens"):
        KVPolicy(pruning="sink_window", window_tokens=2, block_size=16).validate()
    with pytest.raises(ConfigError, match="sampling.top_p"):
        SamplingParams(top_p=0.0).validate()
    with pytest.raises(ConfigError, match="sampling.n"):
        SamplingParams(n=0).validate()
    with pytest.raises(ConfigError, match="sampling.stop"):
        SamplingParams(stop=[""]).validate()
