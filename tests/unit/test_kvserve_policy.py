"""The KV-aware routing policy and prefix index, without Ray: events, snapshots, evictions, load guard."""

from __future__ import annotations

import random

import pytest

from perkunas_ray.engine.block_hash import block_hashes
from perkunas_ray.engine.interface import KVEvent, KVPolicy, SamplingParams
from perkunas_ray.kvserve.routing import FALLBACK, PREFIX_MATCH, KVEventMirror, PrefixIndex, RoutingPolicy

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def confirm(index: PrefixIndex, replica_id: str, events: list[KVEvent], mirror: KVEventMirror | None = None) -> None:
    """The product's path from a replica's KV events to the router: its mirror, then the mirror's snapshot."""
    mirror = mirror or KVEventMirror()
    mirror.apply(events)
    snapshot = mirror.snapshot()
    index.update_snapshot(replica_id, snapshot["kv_hashes"], snapshot["kv_seq"])


def test_events_store_and_evict() -> None:
    index, mirror = PrefixIndex(), KVEventMirror()
    hashes = block_hashes(list(range(64)), 16)
    confirm(index, "a", [KVEvent("stored", hashes)], mirror)
    assert index.match("a", hashes) == 4
    assert index.match("b", hashes) == 0
    confirm(index, "a", [KVEvent("removed", [hashes[2]])], mirror)
    assert index.match("a", hashes) == 2  # chained: a missing middle block ends the match
    confirm(index, "a", [KVEvent("cleared", [])], mirror)
    assert index.match("a", hashes) == 0
    with pytest.raises(ValueError, match="unknown KV event kind"):
        mirror.apply([KVEvent("moved", [])])


def test_snapshot_replaces_and_ignores_stale() -> None:
    index = PrefixIndex()
    index.update_snapshot("a", [1, 2, 3], seq=5)
    assert index.match("a", [1, 2, 3]) == 3
    assert not index.update_snapshot("a", [], seq=4)
    assert index.match("a", [1, 2, 3]) == 3
    index.update_snapshot("a", [1], seq=6)
    assert index.match("a", [1, 2, 3]) == 1
    index.retain(["b"])
    assert index.replicas() == []


def test_optimistic_entries_expire() -> None:
    clock = Clock()
    index = PrefixIndex(optimistic_ttl_s=2.0, clock=clock)
    index.note_routed("a", [7, 8])
    assert index.match("a", [7, 8, 9]) == 2
    clock.now += 2.5
    assert index.match("a", [7, 8, 9]) == 0


def test_replica_eviction_reaches_router_index() -> None:
    """A real engine evicts a cached prefix; the replica's mirror and then the router's index forget it."""
    from perkunas_ray.engine.toy import toy_engine
    from perkunas_ray.kvserve.toy import tiny_model_config

    engine = toy_engine(tiny_model_config(vocab_size=300, max_seq_len=128), KVPolicy(block_size=16, num_blocks=8))
    params = SamplingParams(max_tokens=1, temperature=0)
    mirror, index = KVEventMirror(), PrefixIndex()
    prompt_a = [5 + (i % 200) for i in range(64)]  # 4 full blocks
    engine.generate([prompt_a], params)
    mirror.apply(engine.drain_kv_events())
    index.update_snapshot("r0", mirror.snapshot()["kv_hashes"], mirror.snapshot()["kv_seq"])
    hashes_a = block_hashes(prompt_a, 16)
    assert hashes_a == engine.block_hashes(prompt_a)
    assert index.match("r0", hashes_a) == 4
    # Two other long prompts need the whole 8-block pool: prompt A's cached blocks are evicted.
    for start in (50, 120):
        engine.generate([[start + (i % 100) for i in range(112)]], params)
    events = engine.drain_kv_events()
    assert any(e.kind == "removed" and set(e.block_hashes) & set(hashes_a) for e in events)
    mirror.apply(events)
    index.update_snapshot("r0", mirror.snapshot()["kv_hashes"], mirror.snapshot()["kv_seq"])
    assert index.match("r0", hashes_a) < 4


def test_policy_prefers_longest_prefix() -> None:
    index = PrefixIndex()
    confirm(index, "a", [KVEvent("stored", [1, 2])])
    confirm(index, "b", [KVEvent("stored", [1, 2, 3])])
    decision = RoutingPolicy(4, random.Random(0)).choose([1, 2, 3, 4], ["a", "b", "c"], {}, index)
    assert (decision.replica_id, decision.kind, decision.matched_blocks) == ("b", PREFIX_MATCH, 3)
    assert decision.ranked[0] == "b" and sorted(decision.ranked) == ["a", "b", "c"]


def test_load_guard_skips_overloaded_best() -> None:
    index = PrefixIndex()
    confirm(index, "a", [KVEvent("stored", [1, 2, 3])])
    policy = RoutingPolicy(imbalance_threshold=2, rng=random.Random(0))
    assert policy.choose([1, 2, 3], ["a", "b"], {"a": 2, "b": 0}, index).replica_id == "a"
    decision = policy.choose([1, 2, 3], ["a", "b"], {"a": 3, "b": 0}, index)
    assert (decision.replica_id, decision.kind) == ("b", FALLBACK)


def test_fallback_is_power_of_two_choices() -> None:
    index = PrefixIndex()
    policy = RoutingPolicy(rng=random.Random(1))
    loads = {"a": 5, "b": 0, "c": 5, "d": 5}
    picks = [policy.choose([9], list(loads), loads, index) for _ in range(200)]
    assert all(p.kind == FALLBACK for p in picks)
    # b wins whenever it is one of the two sampled (probability 1/2); never an overloaded pick when b is drawn.
    share_b = sum(p.replica_id == "b" for p in picks) / len(picks)
    assert 0.35 < share_b < 0.65
    assert policy.choose([], ["a"], {}, index).replica_id == "a"


def test_mirror_tracks_events() -> None:
    mirror = KVEventMirror()
    assert not mirror.apply([])
    mirror.apply([KVEvent("stored", [1, 2]), KVEvent("removed", [1])])
    assert mirror.snapshot() == {"kv_seq": 1, "kv_hashes": [2]}
    mirror.apply([KVEvent("cleared", [])])
    assert mirror.snapshot()["kv_hashes"] == []


def test_new_prefix_goes_to_the_replica_caching_less() -> None:
    """Spreads the first turns of new system prompts over the replicas by what they cache (the load their
    follow-ups will bring), not by the load of the moment; the load guard still holds."""
    index = PrefixIndex()
    confirm(index, "a", [KVEvent("stored", [1, 2, 3])])
    confirm(index, "b", [KVEvent("stored", [4])])
    policy = RoutingPolicy(imbalance_threshold=2, rng=random.Random(0))
    for loads in ({"a": 1, "b": 1}, {"a": 0, "b": 2}):
        picks = {policy.choose([7, 8], ["a", "b"], loads, index).replica_id for _ in range(20)}
        assert picks == {"b"}, loads
    assert policy.choose([7, 8], ["a", "b"], {"a": 0, "b": 3}, index).replica_id == "a"  # past the guard
    assert policy.choose([1, 2], ["a", "b"], {"a": 1, "b": 0}, index).replica_id == "a"  # a match is no new prefix
    index.note_routed("a", [7, 8])  # an optimistic entry is a match, not cache room
    assert policy.choose([7, 8], ["a", "b"], {"a": 1, "b": 1}, index).kind == PREFIX_MATCH
