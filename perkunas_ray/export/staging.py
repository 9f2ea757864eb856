"""Write an export beside its destination and rename it into place, so a failure never leaves half of one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from perkunas_ray.export.errors import ExportError


def check_apart(path: Path, sources: Iterable[str | Path | None], flag: str) -> None:
    """Refuse an output that is, holds or lies inside a source: replacing it would delete what is exported.

    Both sides are compared resolved, so a symlink or a `..` cannot hide the overlap.
    """
    out = path.resolve()
    for source in sources:
        if source is None:
            continue
        src = Path(source).resolve()
        if out == src or src in out.parents or out in src.parents:
            relation = "is" if out == src else "lies inside" if src in out.parents else "holds"
            raise ExportError(f"{flag} {path} {relation} the export's source {source} (resolved: {out} and {src}); "
                              f"write the export outside it")


def check_output(path: Path, overwrite: bool, flag: str, is_dir: bool,
                 sources: Iterable[str | Path | None] = ()) -> None:
    """Refuse an existing output unless asked to overwrite it, or one overlapping a source, before any work."""
    check_apart(path, sources, flag)
    if path.exists() and not overwrite:
        raise ExportError(f"{flag} {path} already exists; pass --overwrite to replace it")
    if path.exists() and path.is_dir() != is_dir:
        raise ExportError(f"{flag} {path} exists and is {'a directory' if path.is_dir() else 'not a directory'}; "
                          f"an export {'directory' if is_dir else 'file'} will not replace it")
    if not path.parent.is_dir():
        raise ExportError(f"{flag} {path}: its parent directory {path.parent} does not exist")


@contextlib.contextmanager
def staged_dir(output_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temp dir beside `output_dir`; on success it replaces `output_dir`, on error it is removed."""
    check_output(output_dir, overwrite, "--output-dir", is_dir=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".partial", dir=output_dir.parent))
    try:
        yield tmp
        _replace(tmp, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_file(output: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp path beside `output`; on success it is renamed onto `output`, on error it is removed."""
    check_output(output, overwrite, "--output", is_dir=False)
    fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if output.exists() and not overwrite:  # appeared while we worked
            raise ExportError(f"--output {output} appeared during the export; pass --overwrite to replace it")
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _replace(tmp: Path, output_dir: Path, overwrite: bool) -> None:
    if not output_dir.exists():
        os.rename(tmp, output_dir)
        return
    if not overwrite:
        raise ExportError(f"--output-dir {output_dir} appeared during the export; pass --overwrite to replace it")
    # Move the old one aside first, so at every instant output_dir is either the old or the new export.
    old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".old", dir=output_dir.parent))
    os.rmdir(old)
    os.rename(output_dir, old)
    os.rename(tmp, output_dir)
    shutil.rmtree(old, ignore_errors=True)
