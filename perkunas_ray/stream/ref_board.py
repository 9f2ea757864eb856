"""Where a run's workers find the current shard versions: rank 0 publishes their ObjectRefs, the others wait.

Rank 0 makes every store call that creates a version (updates, restores), so the refs are owned by
it; the other workers borrow them from here. Tasks from different callers reach an actor in no fixed
order, so a worker cannot simply ask the store after rank 0's updates: it asks for version number v
and waits until rank 0 has published it (or a newer one). Only the newest set is kept.
"""

from __future__ import annotations

import asyncio
from typing import Any


class RefBoard:
    """Runs as an async actor (ActorBoard in actors/board.py); methods are coroutines."""

    def __init__(self) -> None:
        self.version = -1
        self.refs: dict[str, Any] = {}  # shard -> ObjectRef of its current version (nested: never resolved)
        self._changed = asyncio.Condition()

    async def publish(self, version: int, refs: dict[str, Any]) -> None:
        async with self._changed:
            if version > self.version:
                self.version, self.refs = version, refs
            self._changed.notify_all()

    async def fetch(self, version: int) -> tuple[int, dict[str, Any]]:
        """(the published version, its refs) once it is `version` or newer."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.version >= version)
            return self.version, self.refs
