"""The checkpoint flusher's core: publish a finished active checkpoint (and the run's logs) to the durable dir."""

from __future__ import annotations

import time
from pathlib import Path

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.format import MANIFEST, checkpoint_dir_name
from perkunas_ray.errors import CheckpointError


class CheckpointFlusher:
    def __init__(self, durable: str, active_dir: str | Path, keep_last: int,
                 run_files: tuple[str, ...] = ()) -> None:
        self.durable = DurableDir(durable)
        self.active_dir = Path(active_dir)
        self.keep_last = keep_last
        self.run_files = run_files  # files of the active dir mirrored to the durable dir on each flush
        self.last_flushed_step = -1
        self.flush_s = 0.0

    def flush(self, step: int, timeout_s: float = 600.0, run_files: dict[str, bytes] | None = None) -> int:
        """Wait for the active checkpoint of `step` to be complete, copy it, prune; returns the step.
        `run_files`: the mirrored run files' contents as their writer sent them (it may live on another node);
        None: read them from the active dir."""
        start = time.perf_counter()
        ckpt = self.active_dir / "checkpoints" / checkpoint_dir_name(step)
        while not (ckpt / MANIFEST).is_file():
            if time.perf_counter() - start > timeout_s:
                raise CheckpointError(f"active checkpoint {ckpt} did not complete within {timeout_s:.0f} s")
            time.sleep(0.02)
        self.durable.upload_checkpoint(ckpt, step)
        if run_files is not None:
            for name, data in run_files.items():
                self.durable.write_bytes(name, data)
        for name in self.run_files if run_files is None else ():
            if (self.active_dir / name).is_file():
                self.durable.upload_file(self.active_dir / name, name)
        self.last_flushed_step = max(self.last_flushed_step, step)
        self.durable.prune(self.keep_last, self.last_flushed_step)
        self.flush_s += time.perf_counter() - start
        return step
