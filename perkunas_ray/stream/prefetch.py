"""Reading the next step's shard versions ahead, along the forward-then-reverse schedule (in a Ray process).

On the compute actor's node it pulls each new shard version into that node's object store as soon as
the store has produced it, at most `window` shards ahead, so the compute side's own staging thread
(which moves them onto the device, or a secondary device) finds them local. On a one-node cluster the
objects are already local and this is cheap bookkeeping.
"""

from __future__ import annotations

import time
from typing import Any

import ray


class ObjectPrefetcher:
    def __init__(self, window: int) -> None:
        self.window = max(1, window)
        self.num_staged = 0
        self.stage_s = 0.0

    def stage(self, schedule: list[list[Any]]) -> int:
        """schedule: ObjectRefs in the order the compute side will read them (each wrapped in a list)."""
        start = time.perf_counter()
        refs = [item[0] for item in schedule]
        for i in range(0, len(refs), self.window):
            chunk = refs[i:i + self.window]
            ray.wait(chunk, num_returns=len(chunk), fetch_local=True)
        self.num_staged += len(refs)
        self.stage_s += time.perf_counter() - start
        return len(refs)
