"""Interface objects between the streaming core, its backends (in-process or Ray actors) and the loop."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


class ActorFailure(RuntimeError):
    """An actor of a Ray backend died or failed; the message says which and where to resume from."""


@dataclasses.dataclass
class UpdatePlan:
    """How the shards are updated after this step's backward."""

    lr: float
    immediate: bool  # update each shard right after its backward (shard / none clipping)
    clip_mode: str  # global | shard | none
    max_grad_norm: float
    loss_scale: float = 1.0  # fp16 dynamic loss scale; grads are unscaled before they leave the device
    delayed: bool = False  # this step's updates may run beside the next step, which reads the shards before them


@dataclasses.dataclass
class StepStats:
    """What the compute side measured during one streamed optimizer step."""

    loss: float = float("nan")
    param_norms: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # shard -> per-param grad norm
    finite: bool = True
    wait_s: float = 0.0
    forward_s: float = 0.0
    backward_s: float = 0.0
    resident_shards: int = 0  # most shards resident at once
    resident_bytes: int = 0  # most shard bytes resident at once
    peak_bytes: int = 0  # tracked peak (CUDA: max_memory_allocated)
    tracked_peak_bytes: int = 0
    rss_bytes: int = 0
    prefetch_hits: int = 0
    prefetch_misses: int = 0
    num_tokens: int = 0
    workers: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # data parallel: each worker's figures


@dataclasses.dataclass
class PendingUpdates:
    """Shard updates a backend has started and may not have finished; `update_stats` waits for them.

    waits: what to wait on before the store's figures are final (on Ray: the ObjectRefs of the store's
    stats that each shard's update returns; in-process: nothing, the updates ran inline).
    """

    waits: list[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class StoreStats:
    """What the shard store reports: write-behind state."""

    pending_writes: int = 0
    write_s: float = 0.0
    update_s: float = 0.0
    num_writes: int = 0


@dataclasses.dataclass
class TrainResult:
    """What a finished training call reports (both trainers)."""

    step: int
    tokens_seen: int
    losses: list[float]
    val_losses: list[tuple[int, float]]
    run_dir: Path
