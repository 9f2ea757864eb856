"""BusyClock: how long a replica had at least one request live (its own timing of the engine's work)."""

from __future__ import annotations

import time


class BusyClock:
    """Seconds during which the count of live requests was above zero (benchmarks divide tokens by it)."""

    def __init__(self) -> None:
        self.num_live = 0
        self._total = 0.0
        self._since = 0.0

    def enter(self) -> None:
        if self.num_live == 0:
            self._since = time.perf_counter()
        self.num_live += 1

    def leave(self) -> None:
        self.num_live -= 1
        if self.num_live == 0:
            self._total += time.perf_counter() - self._since

    def seconds(self) -> float:
        return self._total + (time.perf_counter() - self._since if self.num_live else 0.0)
