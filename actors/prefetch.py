"""PrefetchActor: a thin Ray shell over perkunas_ray.stream.prefetch.ObjectPrefetcher (reads shard versions ahead)."""

from __future__ import annotations

import os
from typing import Any

from perkunas_ray.stream.prefetch import ObjectPrefetcher


class PrefetchActor:
    def __init__(self, window: int) -> None:
        self.core = ObjectPrefetcher(window)

    def ping(self) -> int:
        return os.getpid()

    def stage(self, schedule: list[list[Any]]) -> int:
        return self.core.stage(schedule)
