"""Keep-last-K retention that never deletes a checkpoint the flusher has not yet copied to the durable dir."""

from __future__ import annotations

from collections.abc import Iterable


def steps_to_prune(steps: Iterable[int], keep: int, last_flushed_step: int | None = None) -> list[int]:
    """The complete checkpoints keep-last-K may delete, oldest first.

    All but the newest `keep`, and of those only steps <= `last_flushed_step`: a newer one may still be
    on its way to the durable dir. `None` means everything here is already durable (the durable dir
    itself, or a run without a flusher).
    """
    ordered = sorted(steps)
    old = ordered[:-keep] if keep > 0 else []
    if last_flushed_step is None:
        return old
    return [step for step in old if step <= last_flushed_step]


def retention_warnings(keep_last: int, durable_flush_every: int, save_every: int) -> list[str]:
    """What a checkpoint config gives up, in words for a warning at config load (none for the defaults)."""
    found = []
    if keep_last < 2:
        found.append(f"checkpoint.keep_last_checkpoints={keep_last} keeps no older checkpoint to fall back to "
                     f"when the newest fails its checksums; 2 or more is safer")
    if durable_flush_every == 0:
        piled = (f"; the checkpoints saved every {save_every} steps pile up in the active dir until then (only "
                 f"flushed ones are pruned)") if save_every > 0 else ""
        found.append("checkpoint.durable_flush_every=0 flushes to the durable dir only when the run ends: a crash "
                     f"before then loses every step since the start (resume reads durable checkpoints only){piled}")
    return found
