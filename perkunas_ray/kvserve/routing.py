"""KV-aware routing policy: a per-replica index of cached block hashes and a prefix-match + load-guard choice.

How the index learns what each replica caches: the replica drains its engine's KV events (blocks stored
into and evicted from the prefix cache) into a `KVEventMirror`, and reports the mirror's snapshot
(`routing_stats`) through Serve's `record_routing_stats` hook; the router replaces that replica's
confirmed set with each new snapshot, so evictions disappear from the index. Snapshots lag by a
polling period, so a routing decision is also recorded as an *optimistic* entry that counts as cached
for `optimistic_ttl_s` (long enough for the replica to confirm it, short enough to forget a request that
was aborted). Everything here is plain Python, tested without Ray.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from perkunas_ray.engine.interface import KVEvent

PREFIX_MATCH = "prefix_match"
FALLBACK = "fallback"


class KVEventMirror:
    """Replica side: the set of block hashes in the engine's prefix cache, rebuilt from its KV events."""

    def __init__(self) -> None:
        self.hashes: set[int] = set()
        self.seq = 0  # bumps on every applied batch that changed something
        self.num_stored = 0  # block hashes applied from stored / removed events (what the router was told)
        self.num_removed = 0

    def apply(self, events: Iterable[KVEvent]) -> bool:
        changed = False
        for event in events:
            if event.kind == "stored":
                self.hashes.update(event.block_hashes)
                self.num_stored += len(event.block_hashes)
            elif event.kind == "removed":
                self.hashes.difference_update(event.block_hashes)
                self.num_removed += len(event.block_hashes)
            elif event.kind == "cleared":
                self.hashes.clear()
            else:
                raise ValueError(f"unknown KV event kind {event.kind!r}")
            changed = True
        if changed:
            self.seq += 1
        return changed

    def snapshot(self) -> dict[str, Any]:
        return {"kv_seq": self.seq, "kv_hashes": sorted(self.hashes)}


class PrefixIndex:
    """Router side: per replica, the confirmed cached hashes (from the replica's snapshots) plus optimistic ones."""

    def __init__(self, optimistic_ttl_s: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.optimistic_ttl_s = optimistic_ttl_s
        self._clock = clock
        self._confirmed: dict[str, set[int]] = {}
        self._seq: dict[str, int] = {}
        self._optimistic: dict[str, dict[int, float]] = {}  # replica -> hash -> expiry

    def replicas(self) -> list[str]:
        return sorted(set(self._confirmed) | set(self._optimistic))

    def update_snapshot(self, replica_id: str, hashes: Iterable[int], seq: int | None = None) -> bool:
        """Replace a replica's confirmed set; a snapshot older than the last one applied is ignored."""
        if seq is not None and seq < self._seq.get(replica_id, -1):
            return False
        self._confirmed[replica_id] = set(hashes)
        if seq is not None:
            self._seq[replica_id] = seq
        return True

    def note_routed(self, replica_id: str, hashes: Sequence[int]) -> None:
        """Count a just-routed prompt's blocks as cached on that replica until the TTL runs out."""
        expiry = self._clock() + self.optimistic_ttl_s
        entries = self._optimistic.setdefault(replica_id, {})
        for h in hashes:
            entries[h] = expiry

    def remove_replica(self, replica_id: str) -> None:
        self._confirmed.pop(replica_id, None)
        self._optimistic.pop(replica_id, None)
        self._seq.pop(replica_id, None)

    def retain(self, replica_ids: Iterable[str]) -> None:
        keep = set(replica_ids)
        for replica_id in self.replicas():
            if replica_id not in keep:
                self.remove_replica(replica_id)

    def _expire(self, replica_id: str, now: float) -> dict[int, float]:
        entries = self._optimistic.get(replica_id)
        if not entries:
            return {}
        expired = [h for h, t in entries.items() if t <= now]
        for h in expired:
            del entries[h]
        return entries

    def match(self, replica_id: str, hashes: Sequence[int]) -> int:
        """How many leading blocks of the prompt the replica holds (chained hashes: stop at the first miss)."""
        confirmed = self._confirmed.get(replica_id, set())
        optimistic = self._expire(replica_id, self._clock())
        n = 0
        for h in hashes:
            if h in confirmed or h in optimistic:
                n += 1
            else:
                break
        return n

    def num_blocks(self, replica_id: str) -> int:
        return len(self._confirmed.get(replica_id, ()))

    def num_known_blocks(self, replica_id: str) -> int:
        """Confirmed and (unexpired) optimistic blocks: what the replica holds or is about to."""
        optimistic = self._expire(replica_id, self._clock())
        return len(self._confirmed.get(replica_id, set()) | optimistic.keys())


@dataclasses.dataclass
class Decision:
    replica_id: str
    ranked: list[str]  # preference order (the chosen one first)
    kind: str  # prefix_match | fallback
    matched_blocks: int


class RoutingPolicy:
    """Longest cached prefix wins unless that replica is overloaded; otherwise power of two choices.

    Load guard: the prefix-best replica is skipped when its load exceeds the least-loaded candidate's by
    more than `imbalance_threshold` requests (so one hot prefix cannot drown one replica). A prompt no replica
    holds (a new system prompt, say) goes to the sampled replica caching less, unless that one is past the load
    guard: the prefix will draw its follow-ups to where it lands, so new prefixes spread by the load they will
    bring, not by the load of the moment (which would send a run of them to whichever replica just finished).
    """

    def __init__(self, imbalance_threshold: int = 4, rng: random.Random | None = None) -> None:
        self.imbalance_threshold = imbalance_threshold
        self.rng = rng or random.Random()

    def choose(self, hashes: Sequence[int], replica_ids: Sequence[str], loads: Mapping[str, int],
               index: PrefixIndex) -> Decision:
        if not replica_ids:
            raise ValueError("no replicas to choose from")
        min_load = min(loads.get(r, 0) for r in replica_ids)
        best, best_match = None, 0
        if hashes:
            for r in replica_ids:
                m = index.match(r, hashes)
                if m > best_match or (m == best_match and m > 0 and best is not None
                                      and loads.get(r, 0) < loads.get(best, 0)):
                    best, best_match = r, m
        if best is not None and loads.get(best, 0) - min_load <= self.imbalance_threshold:
            rest = sorted((r for r in replica_ids if r != best), key=lambda r: loads.get(r, 0))
            return Decision(best, [best, *rest], PREFIX_MATCH, best_match)
        new_prefix = best is None and bool(hashes)

        def cost(r: str) -> tuple[bool, int, int]:
            load = loads.get(r, 0)
            if not new_prefix:
                return False, 0, load
            return load - min_load > self.imbalance_threshold, index.num_known_blocks(r), load

        chosen = self._power_of_two(replica_ids, cost)
        rest = sorted((r for r in replica_ids if r != chosen), key=lambda r: loads.get(r, 0))
        return Decision(chosen, [chosen, *rest], FALLBACK, index.match(chosen, hashes) if hashes else 0)

    def _power_of_two(self, replica_ids: Sequence[str], cost: Callable[[str], tuple[bool, int, int]]) -> str:
        if len(replica_ids) == 1:
            return replica_ids[0]
        a, b = self.rng.sample(list(replica_ids), 2)
        return a if cost(a) <= cost(b) else b
