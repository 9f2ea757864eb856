"""What a training launch on Ray reports, read back from the run's log (its workers train out of the driver's reach).

The log reads as one uninterrupted run even when the worker group restarted (each attempt drops the
records newer than its checkpoint), so the launch's losses are its step records after the step it
started from. A remote run dir is read from its durable copy (the flusher mirrors the log there).
"""

from __future__ import annotations

import json

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.stream.build import TrainRun
from perkunas_ray.stream.interface import TrainResult
from perkunas_ray.telemetry.schema import TRAIN_LOG, read_log


def log_records(run: TrainRun) -> list[dict]:
    local = run.paths.log_dir / TRAIN_LOG
    if local.is_file():
        return read_log(local)
    durable = DurableDir(run.paths.durable)
    if not durable.is_file(TRAIN_LOG):
        return []
    lines = durable.read_bytes(TRAIN_LOG).decode("utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def launch_result(run: TrainRun, start_step: int) -> TrainResult:
    """`run` at its newest checkpoint; the losses and validations of the steps after `start_step` (and the
    step-0 validation of a new run)."""
    records = log_records(run)
    losses = [float(r["loss"]) for r in records if r.get("event") == "step" and r["step"] > start_step]
    val_losses = [(int(r["step"]), float(r["val_loss"])) for r in records if r.get("event") == "validation"
                  and (r["step"] > start_step or r["step"] == start_step == 0)]
    return TrainResult(int(run.state["step"]), int(run.state["tokens_seen"]), losses, val_losses, run.paths.log_dir)
