"""The train_log.jsonl record schema: one JSON object per line, `event` says which kind.

Writers (reference trainer, streaming runtime) and readers (report, metrics, tests) share these
names, so a field renamed in one place fails loudly in the others.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TRAIN_LOG = "train_log.jsonl"
TRAINER_STATE = "trainer_state.json"

# event = "step": one line per optimizer step.
STEP_FIELDS = (
    "step", "tokens_seen", "loss", "lr", "grad_norm", "clip_scale", "guard_scale", "guard_replays",
    "guard_accepted", "tokens_per_s", "step_time_s", "wait_s", "forward_s", "backward_s", "update_s",
    "write_s", "resident_shards", "resident_bytes", "peak_bytes", "rss_bytes", "prefetch_hits",
    "prefetch_misses", "pending_writes", "flush_lag_steps", "last_flushed_step",
)
# event = "validation": validation loss at a step, and bits per byte of the validation text (logs older than
# val_bpb lack it).
VALIDATION_FIELDS = ("step", "tokens_seen", "val_loss", "val_ppl", "val_bpb", "val_batches")
# event = "checkpoint" / "flush": a checkpoint written to the active dir / published to the durable dir.
CHECKPOINT_FIELDS = ("step", "path", "seconds")


class JsonlLog:
    """Append-only JSONL writer; each line is flushed so a reader (or a crash) sees whole lines only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, **fields}
        self._file.write(json.dumps(record, default=float) + "\n")
        self._file.flush()
        return record

    def close(self) -> None:
        self._file.close()


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a log that may still be growing (a torn last line is skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def truncate_log_after(path: str | Path, step: int) -> None:
    """On resume, drop records newer than the checkpoint so the log reads as one uninterrupted run."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_log(path) if int(r.get("step", 0)) <= step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in kept:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)
