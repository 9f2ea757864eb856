"""Guarded step replay: accept an update only if the loss on the same batch did not rise beyond tolerance."""

from __future__ import annotations

import dataclasses

from perkunas_ray.config import StreamConfig


@dataclasses.dataclass
class GuardOutcome:
    accepted: bool
    replays: int
    lr_scale: float
    grad_scale: float
    loss_after: float


class GuardPolicy:
    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg

    def scales(self, attempt: int) -> tuple[float, float]:
        """(lr scale, grad-norm scale) of attempt 0, 1, ... (the last listed scale repeats)."""
        lrs, gns = self.cfg.guard_replay_lr_scales, self.cfg.guard_replay_grad_norm_scales
        return lrs[min(attempt, len(lrs) - 1)], gns[min(attempt, len(gns) - 1)]

    def rose(self, loss_before: float, loss_after: float) -> bool:
        """True when the loss rose beyond both the absolute and the relative tolerance (or is not finite)."""
        if loss_after != loss_after or loss_after in (float("inf"), float("-inf")):
            return True
        rise = loss_after - loss_before
        return rise > self.cfg.guard_replay_loss_tolerance and \
            rise > self.cfg.guard_replay_loss_tolerance_ratio * abs(loss_before)

    def exhausted(self, replays: int) -> bool:
        return replays >= self.cfg.guard_replay_max_replays

    @property
    def accept_on_exhaust(self) -> bool:
        return self.cfg.guard_replay_on_exhaust == "accept"
