"""Settings of a Ray worker process that runs the training's critical path (the compute and store actors)."""

from __future__ import annotations

import contextlib
import os

import torch


def prepare_worker_process(num_threads: int) -> None:
    """Ray starts workers at niceness 15; the step's critical path asks for 0 back. `num_threads` 0: all cores."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    torch.set_num_threads(num_threads or os.cpu_count() or 1)
