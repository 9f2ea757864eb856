"""The durable run directory through pyarrow.fs: a local path or any filesystem URI (s3://, gs://, file://)."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

from perkunas_ray.checkpoint.atomic import TMP_SUFFIX, replacing
from perkunas_ray.checkpoint.format import (
    CHECKPOINTS,
    MANIFEST,
    checkpoint_dir_name,
    is_complete_manifest,
    step_of,
)
from perkunas_ray.checkpoint.prune import steps_to_prune
from perkunas_ray.errors import CheckpointError

_CHUNK = 1 << 22


def is_uri(location: str) -> bool:
    return "://" in location


class DurableDir:
    """Files under one root on one pyarrow filesystem; checkpoints become visible when their manifest lands.

    Every file is written under a temp name and moved into place (fsynced first on a local disk), so a
    crash never leaves a half-written file, and above all never a half-written manifest, under its name.
    """

    def __init__(self, location: str | Path) -> None:
        self.location = str(location)
        if is_uri(self.location):
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(self.location)
            except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for unknown schemes
                raise CheckpointError(f"run dir {self.location}: cannot open it as a filesystem URI: {exc}") from exc
            self.local_path: Path | None = Path(self.root) if isinstance(self.fs, pafs.LocalFileSystem) else None
        else:
            self.fs, self.local_path = pafs.LocalFileSystem(), Path(self.location).resolve()
            self.root = str(self.local_path)
        self.root = self.root.rstrip("/")

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str = "") -> bool:
        return self.fs.get_file_info(self._path(rel)).type != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        return self.fs.get_file_info(self._path(rel)).type == pafs.FileType.File

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._path(rel)) as f:
            return f.read()

    def list_dir(self, rel: str, recursive: bool = False) -> list[tuple[str, pafs.FileInfo]]:
        """(path relative to the root, info) of the entries under `rel`; none when it does not exist."""
        selector = pafs.FileSelector(self._path(rel), allow_not_found=True, recursive=recursive)
        return [(info.path[len(self.root) + 1:], info) for info in self.fs.get_file_info(selector)]

    def delete_file(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self._path(rel))

    def delete_dir(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_dir(self._path(rel))

    def write(self, rel: str, fill: Callable[[BinaryIO], object], via_temp: bool = True) -> None:
        """Let `fill` write `rel` under a temp name, then move it into place; on error no temp file stays.

        `via_temp=False` writes a remote file in place: for files no reader trusts before a manifest names
        them, where a move would cost an object store a second full copy.
        """
        self.fs.create_dir(self._path(rel.rsplit("/", 1)[0] if "/" in rel else ""), recursive=True)
        if self.local_path is not None:
            with replacing(self.local_path / rel) as tmp, open(tmp, "wb") as dst:
                fill(dst)
            return
        tmp = rel + TMP_SUFFIX if via_temp else rel
        try:
            with self.fs.open_output_stream(self._path(tmp)) as dst:
                fill(dst)
            if via_temp:
                self.fs.move(self._path(tmp), self._path(rel))
        except BaseException:
            self.delete_file(tmp)
            raise

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.write(rel, lambda dst: dst.write(data))

    def upload_file(self, local: Path, rel: str, via_temp: bool = True) -> None:
        with open(local, "rb") as src:
            self.write(rel, lambda dst: shutil.copyfileobj(src, dst, _CHUNK), via_temp)

    def download_file(self, rel: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        with replacing(local) as tmp, self.fs.open_input_stream(self._path(rel)) as src, open(tmp, "wb") as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)

    # ---- checkpoints ---------------------------------------------------------------------------------
    def list_checkpoints(self) -> list[int]:
        """Steps of the complete checkpoints (a manifest that parses), oldest first."""
        steps = []
        for _, info in self.list_dir(CHECKPOINTS):
            step = step_of(info.base_name)
            manifest = f"{CHECKPOINTS}/{info.base_name}/{MANIFEST}"
            if step is not None and info.type == pafs.FileType.Directory and self.is_file(manifest) \
                    and is_complete_manifest(self.read_bytes(manifest)):
                steps.append(step)
        return sorted(steps)

    def upload_checkpoint(self, local_ckpt: Path, step: int) -> None:
        """Copy an active checkpoint file by file; its manifest goes last, so readers never see half of it.

        A failed copy (disk full, lost connection) removes what it wrote, leaving no partial step behind.
        """
        rel_dir = f"{CHECKPOINTS}/{checkpoint_dir_name(step)}"
        self.delete_file(f"{rel_dir}/{MANIFEST}")  # rewriting a step: invisible first
        manifest = json.loads((local_ckpt / MANIFEST).read_text())
        try:
            for rel in manifest["files"]:
                self.upload_file(local_ckpt / rel, f"{rel_dir}/{rel}", via_temp=False)  # the manifest vouches
            self.upload_file(local_ckpt / MANIFEST, f"{rel_dir}/{MANIFEST}")
        except BaseException:
            self.delete_dir(rel_dir)
            raise

    def download_checkpoint(self, step: int, local_ckpt: Path) -> None:
        rel_dir = f"{CHECKPOINTS}/{checkpoint_dir_name(step)}"
        manifest = json.loads(self.read_bytes(f"{rel_dir}/{MANIFEST}"))
        (local_ckpt / MANIFEST).unlink(missing_ok=True)
        for rel in manifest["files"]:
            self.download_file(f"{rel_dir}/{rel}", local_ckpt / rel)
        self.download_file(f"{rel_dir}/{MANIFEST}", local_ckpt / MANIFEST)

    def prune(self, keep: int, last_flushed_step: int | None = None) -> list[int]:
        """Delete all but the newest `keep` complete checkpoints (manifest first, so each vanishes whole)."""
        removed = steps_to_prune(self.list_checkpoints(), keep, last_flushed_step)
        for step in removed:
            self.delete_checkpoint(step)
        return removed

    def delete_checkpoint(self, step: int) -> None:
        rel_dir = f"{CHECKPOINTS}/{checkpoint_dir_name(step)}"
        self.delete_file(f"{rel_dir}/{MANIFEST}")
        self.delete_dir(rel_dir)

