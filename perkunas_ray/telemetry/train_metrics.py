"""Ray gauges for training telemetry: one per train_log step field (TRAIN_GAUGES) plus validation loss."""

from __future__ import annotations

import math
from typing import Any

from perkunas_ray.telemetry.metric_names import TRAIN_GAUGES, TRAIN_VAL_LOSS, TRAIN_WORKER_GAUGES


class TrainMetrics:
    """Sets `ray.util.metrics.Gauge`s tagged with the run name; created lazily inside a Ray worker."""

    def __init__(self, run: str) -> None:
        self.run = run
        self._gauges: dict[str, Any] | None = None
        self._val = None
        self._worker_gauges: dict[str, Any] | None = None

    def _ensure(self) -> None:
        if self._gauges is not None:
            return
        from ray.util.metrics import Gauge

        self._gauges = {}
        for field, name in TRAIN_GAUGES.items():
            gauge = Gauge(name, description=f"perkunas training: {field} of the latest step", tag_keys=("run",))
            gauge.set_default_tags({"run": self.run})
            self._gauges[field] = gauge
        self._val = Gauge(TRAIN_VAL_LOSS, description="perkunas training: latest validation loss",
                          tag_keys=("run",))
        self._val.set_default_tags({"run": self.run})

    def record_step(self, record: dict[str, Any]) -> None:
        self._ensure()
        assert self._gauges is not None
        for field, gauge in self._gauges.items():
            value = record.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                gauge.set(float(value))

    def record_validation(self, val_loss: float) -> None:
        self._ensure()
        if math.isfinite(val_loss):
            self._val.set(float(val_loss))

    def record_worker(self, record: dict[str, Any]) -> None:
        """One data-parallel worker's figures of a step (a train_log "worker" record), tagged with its rank."""
        if self._worker_gauges is None:
            from ray.util.metrics import Gauge

            self._worker_gauges = {}
            for field, name in TRAIN_WORKER_GAUGES.items():
                gauge = Gauge(name, description=f"perkunas training: {field} of each data-parallel worker",
                              tag_keys=("run", "worker"))
                gauge.set_default_tags({"run": self.run})
                self._worker_gauges[field] = gauge
        tags = {"worker": str(record["worker"])}
        for field, gauge in self._worker_gauges.items():
            value = record.get(field)
            if isinstance(value, (int, float)) and math.isfinite(value):
                gauge.set(float(value), tags=tags)
