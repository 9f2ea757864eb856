"""A plain in-process training loop over the whole model: AdamW/Lion/Adafactor, schedules, accumulation,
clipping, autocast, activation checkpointing, validation, JSONL log, checkpoints in the run-dir format.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from perkunas_ray.checkpoint.format import (
    checkpoint_dir_name,
    decode_rng,
    encode_rng,
    latest_checkpoint,
    list_checkpoints,
    load_model_state,
    load_shard,
    prune_checkpoints,
    read_state,
    write_checkpoint,
    write_json_atomic,
)
from perkunas_ray.config import RunConfig
from perkunas_ray.data import BatchCursor, PackedTokenDataset, iter_eval_batches
from perkunas_ray.data.text_bytes import ValidationBitsPerByte
from perkunas_ray.device import resolve_device
from perkunas_ray.model.decoder import DecoderLM, build_model
from perkunas_ray.model.shards import shard_parameter_shapes, stream_shard_specs
from perkunas_ray.run_setup import check_run_dir_matches, open_datasets, rss_bytes, seed_run_dir
from perkunas_ray.stream.batch import autocast_context, micro_batch_weights, split_batch
from perkunas_ray.stream.interface import TrainResult
from perkunas_ray.stream.optimizers import (
    build_optimizer,
    load_optimizer_state,
    optimizer_state_tensors,
    set_lr,
)
from perkunas_ray.stream.schedules import lr_at
from perkunas_ray.stream.session import parent_checkpoint
from perkunas_ray.telemetry.schema import TRAIN_LOG, TRAINER_STATE, JsonlLog, truncate_log_after


@torch.no_grad()
def evaluate(model: DecoderLM, data: PackedTokenDataset, micro_batch_size: int, max_batches: int,
             device: torch.device, dtype: str = "fp32") -> tuple[float, int]:
    """Mean validation loss over at most `max_batches` in-order batches, and how many were used."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in iter_eval_batches(data, micro_batch_size, max_batches or None):
        x, y = split_batch(batch, device)
        with autocast_context(device, dtype):
            total += float(model(x, y))
        count += 1
    model.train(was_training)
    return (total / count if count else float("nan")), count


class ReferenceTrainer:
    def __init__(self, cfg: RunConfig, run_dir: str | Path, verbose: bool = True) -> None:
        self.cfg = cfg.validate()
        self.run_dir = Path(run_dir)
        self.verbose = verbose
        self.train_data, self.val_data = open_datasets(cfg)
        self.val_bpb = ValidationBitsPerByte(self.val_data, cfg.train.micro_batch_size,
                                             cfg.train.max_validation_batches or None) if self.val_data else None
        check_run_dir_matches(self.run_dir, self.train_data)
        self.device = resolve_device(cfg.train.device)
        self.model = build_model(cfg.model, seed=cfg.train.seed, device=self.device)
        self.model.activation_checkpointing = cfg.train.activation_checkpointing
        self.model.train()
        self.names = dict(self.model.named_parameters())
        self.optimizer = build_optimizer(self.names.items(), cfg.train)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.dtype == "fp16")
        self.cursor = BatchCursor(self.train_data, cfg.train.micro_batch_size, cfg.train.shuffle_train, cfg.train.seed)
        self.step, self.tokens_seen = 0, 0
        torch.manual_seed(cfg.train.seed)
        self._resume_if_possible()
        seed_run_dir(self.run_dir, cfg, self.train_data)
        self.log = JsonlLog(self.run_dir / TRAIN_LOG)

    # ---- checkpoints -------------------------------------------------------------------------------
    def _resume_if_possible(self) -> None:
        if not list_checkpoints(self.run_dir):
            if self.cfg.checkpoint.parent_run_dir:  # fine-tuning: the parent's weights, a fresh optimizer
                parent = parent_checkpoint(self.cfg, self.train_data)
                self.model.load_state_dict(load_model_state(parent), strict=False)
            return
        ckpt = latest_checkpoint(self.run_dir)  # the newest that verifies (a corrupt newest one is skipped, with a warning)
        self.model.load_state_dict(load_model_state(ckpt, verify=False), strict=False)  # verified just above
        for spec in stream_shard_specs(self.cfg.model):
            load_optimizer_state(self.optimizer, self.names, load_shard(ckpt, spec.name, "optim", verify=False))
        state = read_state(ckpt)
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.cursor.load_state_dict(state["cursor"])
        torch.set_rng_state(decode_rng(state["rng"]))
        truncate_log_after(self.run_dir / TRAIN_LOG, self.step)
        if self.verbose:
            print(f"resumed from {ckpt} (step {self.step}, {self.tokens_seen:,} tokens)")

    def save_checkpoint(self) -> Path:
        ckpt = self.run_dir / "checkpoints" / checkpoint_dir_name(self.step)
        param_name = {p: n for n, p in self.names.items()}
        optim_state = optimizer_state_tensors(self.optimizer, param_name)
        shards, optim = {}, {}
        for spec in stream_shard_specs(self.cfg.model):
            owned = shard_parameter_shapes(self.cfg.model, spec)
            shards[spec.name] = {n: self.names[n] for n in owned}
            optim[spec.name] = {k: v for k, v in optim_state.items() if k.split("::")[0] in owned}
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "cursor": self.cursor.state_dict(),
                 "rng": encode_rng(torch.get_rng_state()), "trainer": "reference"}
        write_checkpoint(ckpt, shards, optim, state)
        prune_checkpoints(self.run_dir, self.cfg.checkpoint.keep_last_checkpoints)
        return ckpt

    # ---- one optimizer step --------------------------------------------------------------------------
    def _clip(self) -> tuple[float, float]:
        """Returns (grad norm before clipping, applied scale)."""
        t = self.cfg.train
        params = [p for p in self.names.values() if p.grad is not None]
        if t.max_grad_norm <= 0 or t.grad_clip_mode == "none":
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            return float(norm), 1.0
        if t.grad_clip_mode == "global":
            norm = float(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm))
            return norm, min(1.0, t.max_grad_norm / (norm + 1e-6))
        # shard mode: each stream shard clipped by its own norm (tied head grads land on the embedding)
        norms = []
        for spec in stream_shard_specs(self.cfg.model):
            shard_params = [self.names[n] for n in shard_parameter_shapes(self.cfg.model, spec)]
            norms.append(float(torch.nn.utils.clip_grad_norm_(shard_params, t.max_grad_norm)))
        return math.sqrt(sum(n * n for n in norms)), float("nan")

    def train_step(self) -> dict[str, Any]:
        t = self.cfg.train
        start = time.perf_counter()
        lr = lr_at(t, self.step, self.tokens_seen)
        set_lr(self.optimizer, lr)
        loss_sum = 0.0
        forward_backward = time.perf_counter()
        # The step's blocks are drawn first: each micro-batch's loss is weighted by its share of the step's
        # trained tokens, as in the streamed step, so accumulation is exact for SFT's uneven counts too.
        micro = [split_batch(self.cursor.next_batch(), self.device) for _ in range(t.gradient_accumulation_steps)]
        weights = micro_batch_weights([y for _, y in micro])
        for (x, y), weight in zip(micro, weights, strict=True):
            with autocast_context(self.device, t.dtype):
                loss = self.model(x, y) * weight
            self.scaler.scale(loss).backward()
            loss_sum += float(loss.detach())
            self.tokens_seen += x.numel()
        backward_s = time.perf_counter() - forward_backward
        update_start = time.perf_counter()
        self.scaler.unscale_(self.optimizer)
        grad_norm, clip_scale = self._clip()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        now = time.perf_counter()
        tokens = t.micro_batch_size * t.gradient_accumulation_steps * self.train_data.seq_len
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else rss_bytes()
        return {"step": self.step, "tokens_seen": self.tokens_seen, "loss": loss_sum, "lr": lr,
                "grad_norm": grad_norm, "clip_scale": clip_scale, "tokens_per_s": tokens / (now - start),
                "step_time_s": now - start, "forward_s": 0.0, "backward_s": backward_s,
                "update_s": now - update_start, "peak_bytes": peak, "rss_bytes": rss_bytes()}

    # ---- the loop ----------------------------------------------------------------------------------------
    def validate(self) -> float | None:
        if self.val_data is None or self.val_bpb is None or self.cfg.train.max_validation_batches == 0:
            return None
        val_loss, count = evaluate(self.model, self.val_data, self.cfg.train.micro_batch_size,
                                   self.cfg.train.max_validation_batches, self.device, self.cfg.train.dtype)
        if count == 0:
            return None
        val_ppl, val_bpb = math.exp(min(val_loss, 50.0)), self.val_bpb(val_loss)
        self.log.write("validation", step=self.step, tokens_seen=self.tokens_seen, val_loss=val_loss,
                       val_ppl=val_ppl, val_bpb=val_bpb, val_batches=count)
        self._say(f"step {self.step:6d} | val loss {val_loss:.4f} | val ppl {val_ppl:.2f} | val bpb {val_bpb:.4f}")
        return val_loss

    def train(self, max_steps: int | None = None) -> TrainResult:
        t = self.cfg.train
        target = t.max_steps if max_steps is None else min(t.max_steps, self.step + max_steps)
        losses: list[float] = []
        val_losses: list[tuple[int, float]] = []
        if self.step == 0 and (first := self.validate()) is not None:
            val_losses.append((0, first))
        while self.step < target:
            record = self.train_step()
            self.log.write("step", **record)
            losses.append(record["loss"])
            if self.verbose and (self.step % max(1, t.max_steps // 20) == 0 or self.step == 1):
                self._say(f"step {self.step:6d} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
                          f"grad norm {record['grad_norm']:.3f} | {record['tokens_per_s']:,.0f} tok/s")
            due = t.validate_every and self.step % t.validate_every == 0 and self.step < target
            if due and (v := self.validate()) is not None:
                val_losses.append((self.step, v))
            if t.save_every and self.step % t.save_every == 0 and self.step < target:
                self.save_checkpoint()
        if (v := self.validate()) is not None:
            val_losses.append((self.step, v))
        ckpt = self.save_checkpoint()
        write_json_atomic(self.run_dir / TRAINER_STATE, {
            "step": self.step, "tokens_seen": self.tokens_seen, "last_checkpoint": str(ckpt),
            "last_loss": losses[-1] if losses else None, "val_losses": val_losses, "trainer": "reference"})
        self.log.close()
        return TrainResult(self.step, self.tokens_seen, losses, val_losses, self.run_dir)

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)
