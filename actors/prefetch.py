"""PrefetchActor: a thin Ray shell over perkunas_ray.stream.prefetch.ObjectPrefetcher (reads shard versions ahead)."""

from __future__ import annotations

from typing import Any

from perkunas_ray.stream.prefetch import ObjectPrefetcher


class PrefetchActor:
    def __init__(self, window: int) -> None:
        self.core = ObjectPrefetcher(window)

    def ping(self) -> bool:
        return True

    def stage(self, schedule: list[list[Any]]) -> int:
        return self.core.stage(schedule)
