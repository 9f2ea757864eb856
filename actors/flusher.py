"""CheckpointFlusherActor: a thin Ray shell over perkunas_ray.checkpoint.flush.CheckpointFlusher."""

from __future__ import annotations

from perkunas_ray.checkpoint.flush import CheckpointFlusher


class CheckpointFlusherActor:
    """Publishes finished active checkpoints to the durable dir, one at a time, in step order."""

    def __init__(self, durable: str, active_dir: str, keep_last: int, run_files: tuple[str, ...] = ()) -> None:
        self.core = CheckpointFlusher(durable, active_dir, keep_last, run_files)

    def ping(self) -> bool:
        return True

    def flush(self, step: int) -> int:
        return self.core.flush(step)
