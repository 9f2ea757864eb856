"""The training loop over a streaming backend: LR schedule, clipping, guard replay, validation, checkpoints, logs.

The same loop drives the in-process backend (tests, one-process runs) and the Ray actors (actors/driver.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from perkunas_ray.checkpoint.format import write_json_atomic
from perkunas_ray.config import RunConfig
from perkunas_ray.data import BatchCursor, PackedTokenDataset, iter_eval_batches
from perkunas_ray.data.text_bytes import ValidationBitsPerByte
from perkunas_ray.model.shards import stream_shard_specs
from perkunas_ray.stream.clipping import clip_coefficient, reported_clip_scale, total_norm
from perkunas_ray.stream.guard import GuardOutcome, GuardPolicy
from perkunas_ray.stream.interface import PendingUpdates, StepStats, StoreStats, TrainResult, UpdatePlan
from perkunas_ray.stream.loss_scale import LossScaler
from perkunas_ray.stream.schedules import lr_at
from perkunas_ray.telemetry.schema import STEP_FIELDS, TRAIN_LOG, TRAINER_STATE, JsonlLog, truncate_log_after


class Backend(Protocol):
    """What the loop needs from the runtime; versions of shards stay inside the backend."""

    def train_step(self, batch: np.ndarray, plan: UpdatePlan, snapshot: bool) -> tuple[StepStats, PendingUpdates]:
        """One streamed step; with plan.immediate its shard updates have started too (the PendingUpdates)."""

    def update_all(self, lr: float, clip_coef: float | None, grad_scale: float, snapshot: bool) -> PendingUpdates: ...

    def update_stats(self, pending: PendingUpdates) -> StoreStats:
        """The store's figures once `pending` is done."""

    def eval_losses(self, batches: np.ndarray) -> list[float]: ...

    def restore(self) -> None: ...

    def commit(self) -> None: ...

    def checkpoint(self, step: int, state: dict[str, Any]) -> Path: ...

    def flush(self, step: int) -> None: ...

    def last_flushed_step(self, wait: bool = False) -> int: ...

    def rng_state(self) -> str: ...

    def set_rng_state(self, state: str) -> None: ...

    def emit(self, record: dict[str, Any], event: str = "step") -> None: ...

    def close(self) -> None: ...


def mean_eval_loss(eval_losses: Callable[[np.ndarray], list[float]], data: PackedTokenDataset,
                   cfg: RunConfig, max_batches: int | None) -> tuple[float, int]:
    """(mean loss, number of batches) over the first `max_batches` eval batches (None: all), a step's
    worth of micro-batches per call; NaN when there are none."""
    t = cfg.train
    batches = list(iter_eval_batches(data, t.micro_batch_size, max_batches))
    group = max(1, t.gradient_accumulation_steps)
    losses: list[float] = []
    for i in range(0, len(batches), group):
        losses += eval_losses(np.stack(batches[i:i + group]))
    return (float(np.mean(losses)) if losses else float("nan")), len(batches)


class TrainLoop:
    def __init__(self, cfg: RunConfig, backend: Backend, train_data: PackedTokenDataset,
                 val_data: PackedTokenDataset | None, log_dir: Path, start: dict[str, Any],
                 verbose: bool = True) -> None:
        self.cfg, self.backend, self.val_data, self.verbose = cfg, backend, val_data, verbose
        t = cfg.train
        self.cursor = BatchCursor(train_data, t.micro_batch_size, t.shuffle_train, t.seed)
        self.cursor.load_state_dict(start["cursor"])
        self.step, self.tokens_seen = int(start["step"]), int(start["tokens_seen"])
        self.scaler = LossScaler(t.dtype == "fp16")
        self.scaler.load_state_dict(start.get("loss_scale"))
        backend.set_rng_state(start["rng"])
        self.shard_names = [s.name for s in stream_shard_specs(cfg.model)]
        self.guard = GuardPolicy(cfg.stream) if cfg.stream.guarded_step_replay else None
        self.log_dir = Path(log_dir)
        truncate_log_after(self.log_dir / TRAIN_LOG, self.step)
        self.log = JsonlLog(self.log_dir / TRAIN_LOG)
        self._pending: tuple[dict[str, Any], PendingUpdates] | None = None
        self._workers: list[dict[str, Any]] = []  # the pending step's per-worker figures (data parallel)
        self._last_store = StoreStats()
        self.losses: list[float] = []
        self.val_losses: list[tuple[int, float]] = []
        self.val_bpb = ValidationBitsPerByte(val_data, t.micro_batch_size, t.max_validation_batches) \
            if val_data is not None else None
        self.last_checkpoint: Path | None = None

    # ---- one step --------------------------------------------------------------------------------------
    def _immediate(self) -> bool:
        t, s = self.cfg.train, self.cfg.stream
        unit_first = s.guard_replay_lr_scales[0] == 1.0 and s.guard_replay_grad_norm_scales[0] == 1.0
        return t.grad_clip_mode != "global" and t.dtype != "fp16" and (self.guard is None or unit_first)

    def train_step(self) -> dict[str, Any]:
        t = self.cfg.train
        start = time.perf_counter()
        lr = lr_at(t, self.step, self.tokens_seen)
        batch = np.stack([self.cursor.next_batch() for _ in range(t.gradient_accumulation_steps)])
        s = self.cfg.stream
        delayed = s.delayed_update and self.step >= s.delayed_update_warmup_steps
        plan = UpdatePlan(lr, self._immediate(), t.grad_clip_mode, t.max_grad_norm, self.scaler.scale, delayed)
        stats, pending = self.backend.train_step(batch, plan, snapshot=self.guard is not None)
        self._finish_pending()  # the previous step's updates are done: this step's forward read them
        norms = [n for name in self.shard_names for n in stats.param_norms.get(name, [])]
        grad_norm = total_norm(norms)
        guard = GuardOutcome(True, 0, 1.0, 1.0, stats.loss)
        log_now = False  # the updates are finished (guard) or skipped (fp16 overflow): log the record at once
        if not stats.finite and self.scaler.enabled:
            self.backend.commit()  # fp16 overflow: skip the update, as GradScaler does
            self.scaler.update(found_inf=True)
            log_now = True
        else:
            coef = clip_coefficient(grad_norm, t.max_grad_norm) \
                if t.grad_clip_mode == "global" and t.max_grad_norm > 0 else None
            if not plan.immediate:
                lr_scale, grad_scale = self.guard.scales(0) if self.guard else (1.0, 1.0)
                pending = self.backend.update_all(lr * lr_scale, coef, grad_scale, snapshot=self.guard is not None)
            if self.guard is not None:
                guard = self._guarded(batch, stats.loss, lr, coef)
                log_now = True
            self.scaler.update(found_inf=False)
        self.step += 1
        self.tokens_seen += stats.num_tokens
        now = time.perf_counter()
        record = {
            "step": self.step, "tokens_seen": self.tokens_seen, "loss": stats.loss, "lr": lr,
            "grad_norm": grad_norm, "clip_scale": reported_clip_scale(t.grad_clip_mode, grad_norm, t.max_grad_norm),
            "guard_scale": guard.lr_scale, "guard_replays": guard.replays, "guard_accepted": guard.accepted,
            "tokens_per_s": stats.num_tokens / (now - start), "step_time_s": now - start, "wait_s": stats.wait_s,
            "forward_s": stats.forward_s, "backward_s": stats.backward_s, "update_s": 0.0,
            "resident_shards": stats.resident_shards, "resident_bytes": stats.resident_bytes,
            "peak_bytes": stats.peak_bytes, "tracked_peak_bytes": stats.tracked_peak_bytes,
            "rss_bytes": stats.rss_bytes, "prefetch_hits": stats.prefetch_hits,
            "prefetch_misses": stats.prefetch_misses, "loss_scale": self.scaler.scale,
        }
        self.losses.append(stats.loss)
        self._workers = stats.workers
        self._pending = (record, pending)
        if log_now:
            self._finish_pending()
        return record

    def _guarded(self, batch: np.ndarray, loss_before: float, lr: float, coef: float | None) -> GuardOutcome:
        assert self.guard is not None
        replays, lr_scale, grad_scale = 0, *self.guard.scales(0)
        while True:
            loss_after = float(np.mean(self.backend.eval_losses(batch)))
            if not self.guard.rose(loss_before, loss_after):
                accepted = True
                break
            if self.guard.exhausted(replays):
                accepted = self.guard.accept_on_exhaust
                if not accepted:
                    self.backend.restore()
                break
            replays += 1
            lr_scale, grad_scale = self.guard.scales(replays)
            self.backend.restore()
            self.backend.update_all(lr * lr_scale, coef, grad_scale, snapshot=True)
        self.backend.commit()
        return GuardOutcome(accepted, replays, lr_scale, grad_scale, loss_after)

    def wait_updates(self) -> None:
        """Block until the last step's shard updates are done (and its log record is written)."""
        self._finish_pending()

    def _finish_pending(self) -> None:
        """Complete the pending step record with the store's figures once its updates are done; log it."""
        if self._pending is None:
            return
        record, pending = self._pending
        self._pending = None
        store = self.backend.update_stats(pending)
        record["update_s"] += max(0.0, store.update_s - self._last_store.update_s)
        record["write_s"] = max(0.0, store.write_s - self._last_store.write_s)
        record["pending_writes"] = store.pending_writes
        self._last_store = store
        flushed = self.backend.last_flushed_step()
        record["last_flushed_step"] = flushed
        record["flush_lag_steps"] = record["step"] - flushed if flushed >= 0 else record["step"]
        missing = [f for f in STEP_FIELDS if f not in record]
        assert not missing, missing
        self.log.write("step", **record)
        self.backend.emit(record)
        for figures in self._workers:
            self.backend.emit(self.log.write("worker", step=record["step"], **figures), event="worker")
        t = self.cfg.train
        if self.verbose and (record["step"] % max(1, t.max_steps // 20) == 0 or record["step"] == 1):
            self._say(f"step {record['step']:6d} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
                      f"grad norm {record['grad_norm']:.3f} | {record['tokens_per_s']:,.0f} tok/s | "
                      f"peak {record['peak_bytes'] / 2**20:.1f} MiB | wait {record['wait_s']:.3f}s")

    # ---- validation, checkpoints, the loop ------------------------------------------------------------
    def validate(self) -> float | None:
        t = self.cfg.train
        if self.val_data is None or t.max_validation_batches == 0:
            return None
        val_loss, num_batches = mean_eval_loss(self.backend.eval_losses, self.val_data, self.cfg,
                                               t.max_validation_batches)
        if not num_batches or self.val_bpb is None:
            return None
        record = {"step": self.step, "tokens_seen": self.tokens_seen, "val_loss": val_loss,
                  "val_ppl": math.exp(min(val_loss, 50.0)), "val_bpb": self.val_bpb(val_loss),
                  "val_batches": num_batches}
        self.log.write("validation", **record)
        self.backend.emit(record, event="validation")
        self.val_losses.append((self.step, val_loss))
        self._say(f"step {self.step:6d} | val loss {val_loss:.4f} | val ppl {record['val_ppl']:.2f} | "
                  f"val bpb {record['val_bpb']:.4f}")
        return val_loss

    def save(self, flush: bool) -> Path:
        self._finish_pending()
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "cursor": self.cursor.state_dict(),
                 "rng": self.backend.rng_state(), "trainer": "stream", "loss_scale": self.scaler.state_dict(),
                 "last_loss": self.losses[-1] if self.losses else None}
        start = time.perf_counter()
        ckpt = self.backend.checkpoint(self.step, state)
        self.log.write("checkpoint", step=self.step, path=str(ckpt), seconds=time.perf_counter() - start)
        if flush:
            self.backend.flush(self.step)
        self.last_checkpoint = ckpt
        self._write_trainer_state()
        return ckpt

    def _write_trainer_state(self) -> None:
        write_json_atomic(self.log_dir / TRAINER_STATE, {
            "step": self.step, "tokens_seen": self.tokens_seen, "trainer": "stream",
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "last_loss": self.losses[-1] if self.losses else None, "val_losses": self.val_losses,
            "last_flushed_step": self.backend.last_flushed_step(), "max_steps": self.cfg.train.max_steps})

    def run(self, max_steps: int | None = None) -> TrainResult:
        t, c = self.cfg.train, self.cfg.checkpoint
        target = t.max_steps if max_steps is None else min(t.max_steps, self.step + max_steps)
        if self.step == 0:
            self.validate()
        while self.step < target:
            self.train_step()
            if self.step >= target:
                break
            if t.validate_every and self.step % t.validate_every == 0:
                self._finish_pending()
                self.validate()
            flush_due = c.durable_flush_every and self.step % c.durable_flush_every == 0
            if flush_due or (t.save_every and self.step % t.save_every == 0):
                self.save(flush=bool(flush_due))
        self._finish_pending()
        self.validate()
        self.save(flush=True)
        self.backend.last_flushed_step(wait=True)
        self._write_trainer_state()
        self.log.close()
        return TrainResult(self.step, self.tokens_seen, self.losses, self.val_losses, self.log_dir)

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)
