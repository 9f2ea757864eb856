"""Per-API-key request rate limit: a token bucket per key name, refilled continuously (429 when empty)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from perkunas_ray.kvserve.errors import rate_limited
from perkunas_ray.kvserve.registry import RequestLimits


class RateLimit(Protocol):
    """What the app asks before each request: raise the 429, or return (a local RateLimiter, or a shared one)."""

    async def acquire(self, key: str) -> None: ...


class RateLimiter:
    """`limits.requests_per_minute` per key, bursts up to `limits.burst`; off at 0. One ingress replica keeps its
    own; several share one through the rate board (deployments/rate_board.py), so a key has one budget."""

    def __init__(self, limits: RequestLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = limits.requests_per_minute
        self.capacity = float(limits.burst or limits.requests_per_minute)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key name -> (tokens, when last refilled)

    def take(self, key: str) -> float | None:
        """Take one request from `key`'s bucket: None, or the seconds until there is one (nothing taken)."""
        if not self.per_minute:
            return None
        now = self.clock()
        rate = self.per_minute / 60.0
        tokens, then = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate
        self._buckets[key] = (tokens - 1.0, now)
        return None

    def check(self, key: str) -> None:
        """Take one request from `key`'s bucket; 429 with Retry-After when there is none left."""
        wait = self.take(key)
        if wait is not None:
            raise rate_limited(self.per_minute, wait)

    async def acquire(self, key: str) -> None:
        """`check`, as the app calls every limiter (a shared one waits on the board)."""
        self.check(key)
