"""RunFollower: which newer checkpoint of a training run a following engine replica should switch to."""

from __future__ import annotations

import logging
from pathlib import Path

from perkunas_ray.checkpoint.format import list_checkpoints

logger = logging.getLogger(__name__)


class RunFollower:
    """Finds the newest complete checkpoint of a run dir after the step being served.

    Polling only lists manifests (cheap enough every poll); the checksums are checked when the checkpoint is
    loaded, and a step that fails to load is skipped for good, so a corrupt checkpoint costs one attempt and
    the next complete one is taken.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.skipped: set[int] = set()

    def newer_step(self, served: int | None) -> int | None:
        """The newest complete checkpoint's step when it is newer than `served`, else None."""
        candidates = [step for step, _ in list_checkpoints(self.run_dir)
                      if step not in self.skipped and (served is None or step > served)]
        return max(candidates) if candidates else None

    def skip(self, step: int, reason: BaseException, served: int | None) -> None:
        self.skipped.add(step)
        logger.warning("follow %s: checkpoint step %d cannot be served (%s); still serving step %s",
                       self.run_dir, step, reason, served)
