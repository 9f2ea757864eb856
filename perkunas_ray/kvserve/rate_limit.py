"""Per-API-key request rate limit: a token bucket per key name, refilled continuously (429 when empty)."""

from __future__ import annotations

import time
from collections.abc import Callable

from perkunas_ray.kvserve.errors import rate_limited
from perkunas_ray.kvserve.registry import RequestLimits


class RateLimiter:
    """`limits.requests_per_minute` per key and ingress replica, bursts up to `limits.burst`; off at 0."""

    def __init__(self, limits: RequestLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = limits.requests_per_minute
        self.capacity = float(limits.burst or limits.requests_per_minute)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key name -> (tokens, when last refilled)

    def check(self, key: str) -> None:
        """Take one request from `key`'s bucket; 429 with Retry-After when there is none left."""
        if not self.per_minute:
            return
        now = self.clock()
        rate = self.per_minute / 60.0
        tokens, then = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise rate_limited(self.per_minute, (1.0 - tokens) / rate)
        self._buckets[key] = (tokens - 1.0, now)
