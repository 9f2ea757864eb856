"""At run start, remove what a crashed or failed write left in a run dir: temp files and abandoned checkpoints."""

from __future__ import annotations

import pyarrow.fs as pafs

from perkunas_ray.checkpoint.atomic import TMP_SUFFIX
from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.format import CHECKPOINTS, step_of


def clean_stale_writes(run_dir: DurableDir) -> list[str]:
    """Delete `*.tmp` files (top level and under checkpoints/) and step dirs without a valid manifest that
    are older than the newest complete checkpoint; returns the relative paths removed.

    Only safe while nobody writes the run dir: call it at run start, holding the RunDirLock. An incomplete
    step newer than every complete one is left alone (SQLite keeps a hot journal it cannot judge); training
    rewrites it when it reaches that step again.
    """
    complete = run_dir.list_checkpoints()
    removed = []
    for rel, info in run_dir.list_dir(CHECKPOINTS):
        step = step_of(info.base_name)
        if step is not None and info.type == pafs.FileType.Directory and complete and step < complete[-1] \
                and step not in complete:
            run_dir.delete_dir(rel)
            removed.append(rel)
    entries = run_dir.list_dir("") + run_dir.list_dir(CHECKPOINTS, recursive=True)
    for rel, info in entries:
        if info.type == pafs.FileType.File and info.base_name.endswith(TMP_SUFFIX):
            run_dir.delete_file(rel)
            removed.append(rel)
    return removed
