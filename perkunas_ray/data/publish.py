"""Build a data set in a temp dir beside its destination and move it in whole, so a failure costs no old one."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from perkunas_ray.data.manifest import MANIFEST_FILE_NAME

_SHARD_NAME = re.compile(r"^(train|val)_\d+\.npy(\.tmp)?$")


@contextlib.contextmanager
def staged_data_dir(output_dir: Path) -> Iterator[Path]:
    """Yield an empty temp dir beside `output_dir`; on success its data set replaces the one there, on error
    the temp dir is removed and `output_dir` is as it was."""
    target = output_dir.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        publish_data_set(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish_data_set(staging: Path, output_dir: Path) -> None:
    """Move a finished data set from `staging` into `output_dir`, manifest last.

    A new dir is one rename. Into an existing dir (which may hold other files, even the corpus) the old
    manifest goes first, so no instant shows a manifest over mixed shards; then the new files, then the
    old shards the new set does not have, then the new manifest.
    """
    if not output_dir.exists():
        os.rename(staging, output_dir)
        return
    (output_dir / MANIFEST_FILE_NAME).unlink(missing_ok=True)
    new_names = {path.name for path in staging.iterdir()}
    for name in new_names - {MANIFEST_FILE_NAME}:
        os.replace(staging / name, output_dir / name)
    for path in output_dir.iterdir():
        if _SHARD_NAME.match(path.name) and path.name not in new_names and path.is_file():
            path.unlink()
    os.replace(staging / MANIFEST_FILE_NAME, output_dir / MANIFEST_FILE_NAME)
    staging.rmdir()
