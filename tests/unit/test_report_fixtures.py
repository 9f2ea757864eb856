"""Synthetic train_log.jsonl files for the report tests: a streaming run with every field, a sparse one."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from perkunas_ray.telemetry.schema import STEP_FIELDS, TRAIN_LOG, JsonlLog


def streaming_record(step: int, rng: random.Random) -> dict:
    """One step record with every STEP_FIELDS field, shaped like the streaming runtime's."""
    loss = 2.5 + 6.5 * math.exp(-step / 60) + rng.gauss(0, 0.08)
    replays = 1 if rng.random() < 0.1 else 0
    parts = {"wait_s": 0.02 + rng.random() * 0.01, "forward_s": 0.2, "backward_s": 0.35, "update_s": 0.05,
             "write_s": 0.03}
    record = {
        "step": step, "tokens_seen": step * 4096, "loss": loss, "lr": 3e-3 * min(1.0, step / 20),
        "grad_norm": 1.0 + rng.random(), "clip_scale": min(1.0, 1.0 / (1.0 + rng.random())),
        "guard_scale": 0.7 if replays else 1.0, "guard_replays": replays, "guard_accepted": step % 97 != 0,
        "tokens_per_s": 6000 + rng.gauss(0, 300), "step_time_s": sum(parts.values()) + 0.01, **parts,
        "resident_shards": 2 + step % 2, "resident_bytes": 40 * 2**20, "peak_bytes": 300 * 2**20 + step * 1000,
        "rss_bytes": 900 * 2**20, "prefetch_hits": 5, "prefetch_misses": step % 3 == 0,
        "pending_writes": step % 4, "flush_lag_steps": step % 50, "last_flushed_step": step - step % 50,
    }
    record["prefetch_misses"] = int(record["prefetch_misses"])
    assert set(record) == set(STEP_FIELDS)
    return record


def write_streaming_log(run_dir: Path, num_steps: int = 200, torn_tail: bool = False) -> Path:
    rng = random.Random(0)
    log = JsonlLog(run_dir / TRAIN_LOG)
    log.write("validation", step=0, tokens_seen=0, val_loss=9.0, val_ppl=math.exp(9.0), val_batches=4)
    for step in range(1, num_steps + 1):
        log.write("step", **streaming_record(step, rng))
        if step % 50 == 0:
            val = 2.7 + 6.3 * math.exp(-step / 60)
            log.write("validation", step=step, tokens_seen=step * 4096, val_loss=val, val_ppl=math.exp(val),
                      val_batches=4)
            log.write("checkpoint", step=step, path=f"checkpoints/step_{step:08d}", seconds=0.4)
            log.write("flush", step=step, path="durable", seconds=1.2)
    log.close()
    path = run_dir / TRAIN_LOG
    if torn_tail:  # a run still going: the writer is half way through a line
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": "step", "step": num_steps + 1, "loss": 1.0})[:25])
    return path


def write_reference_log(run_dir: Path, num_steps: int = 30) -> Path:
    """Only the fields the reference trainer writes (no guard, residency, prefetch, flush fields)."""
    log = JsonlLog(run_dir / TRAIN_LOG)
    for step in range(1, num_steps + 1):
        log.write("step", step=step, tokens_seen=step * 1024, loss=9.0 - step * 0.1, lr=1e-3, grad_norm=1.5,
                  clip_scale=1.0, tokens_per_s=5000.0 + step, step_time_s=0.2, forward_s=0.0, backward_s=0.15,
                  update_s=0.01, peak_bytes=5e8, rss_bytes=5e8)
    log.write("validation", step=num_steps, tokens_seen=num_steps * 1024, val_loss=6.5, val_ppl=math.exp(6.5),
              val_batches=2)
    log.close()
    return run_dir / TRAIN_LOG
