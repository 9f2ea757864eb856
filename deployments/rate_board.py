"""RateBoard: the one rate budget per API key that several ingress replicas share (limits.requests_per_minute).

Each ingress replica keeping its own bucket would let a key send N times its limit through N replicas. One
small deployment holds the buckets; an ingress asks it once per request (one Ray call),
and only when the registry has a rate limit and more than one ingress replica.
"""

from __future__ import annotations

from typing import Any

from perkunas_ray.kvserve.errors import rate_limited
from perkunas_ray.kvserve.rate_limit import RateLimiter
from perkunas_ray.kvserve.registry import RequestLimits

RATE_BOARD_NAME = "kvserve_rate_board"


class RateBoard:
    def __init__(self, limits: RequestLimits) -> None:
        self.limiter = RateLimiter(limits)

    def take(self, key: str) -> float | None:
        return self.limiter.take(key)


class SharedRateLimiter:
    """An ingress replica's view of the board: the same `acquire` as a local RateLimiter."""

    def __init__(self, board: Any, limits: RequestLimits) -> None:
        self.board = board
        self.per_minute = limits.requests_per_minute

    async def acquire(self, key: str) -> None:
        wait = await self.board.take.remote(key)
        if wait is not None:
            raise rate_limited(self.per_minute, wait)
