"""RefBoardActor: a thin async Ray shell over perkunas_ray.stream.ref_board.RefBoard (the current shard versions)."""

from __future__ import annotations

import os
from typing import Any

from perkunas_ray.stream.ref_board import RefBoard


class RefBoardActor:
    def __init__(self) -> None:
        self.core = RefBoard()

    async def ping(self) -> int:
        return os.getpid()

    async def publish(self, version: int, refs: dict[str, Any]) -> None:
        await self.core.publish(version, refs)

    async def fetch(self, version: int) -> tuple[int, dict[str, Any]]:
        return await self.core.fetch(version)
