"""CheckpointFlusherActor: a thin Ray shell over CheckpointFlusher; it also sets the run's training gauges."""

from __future__ import annotations

import os
from typing import Any

from perkunas_ray.checkpoint.flush import CheckpointFlusher
from perkunas_ray.telemetry.train_metrics import TrainMetrics


class CheckpointFlusherActor:
    """Publishes finished active checkpoints to the durable dir, one at a time, in step order.

    Telemetry lives here, off the compute actor (the device owner) and the store (on the update path).
    """

    def __init__(self, durable: str, active_dir: str, keep_last: int, run_files: tuple[str, ...] = (),
                 run_name: str = "") -> None:
        self.core = CheckpointFlusher(durable, active_dir, keep_last, run_files)
        self.metrics = TrainMetrics(run_name)

    def ping(self) -> int:
        return os.getpid()

    def flush(self, step: int, run_files: dict[str, bytes] | None = None) -> int:
        return self.core.flush(step, run_files=run_files)

    def emit(self, record: dict[str, Any], event: str = "step") -> None:
        if event == "validation":
            self.metrics.record_validation(float(record["val_loss"]))
        elif event == "worker":
            self.metrics.record_worker(record)
        else:
            self.metrics.record_step(record)
