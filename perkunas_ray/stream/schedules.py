"""Learning-rate schedules: constant, cosine, WSD (warmup-stable-decay), and seed 000's token-based one."""

from __future__ import annotations

import math

from perkunas_ray.config import TrainConfig


def lr_at(cfg: TrainConfig, step: int, tokens_seen: int) -> float:
    """LR for optimizer step `step` (0-based), after `tokens_seen` tokens were consumed by earlier steps."""
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    if cfg.lr_schedule == "tokens":
        if tokens_seen < cfg.warmup_tokens:
            return peak * (tokens_seen + 1) / cfg.warmup_tokens
        progress = min(1.0, (tokens_seen - cfg.warmup_tokens) / cfg.decay_tokens)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return peak
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
    # wsd: hold the peak, then decay linearly to the floor over the last wsd_decay_fraction of the run
    decay_steps = max(1, round(cfg.max_steps * cfg.wsd_decay_fraction))
    decay_start = cfg.max_steps - decay_steps
    if step < decay_start:
        return peak
    return peak + (floor - peak) * min(1.0, (step - decay_start + 1) / decay_steps)
