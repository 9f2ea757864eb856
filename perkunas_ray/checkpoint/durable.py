"""The durable run directory through pyarrow.fs: a local path or any filesystem URI (s3://, gs://, file://)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.fs as pafs

from perkunas_ray.checkpoint.format import CHECKPOINTS, MANIFEST, checkpoint_dir_name
from perkunas_ray.errors import CheckpointError

_STEP_DIR = re.compile(r"^step_(\d{8})$")
_CHUNK = 1 << 22


def is_uri(location: str) -> bool:
    return "://" in location


class DurableDir:
    """Files under one root on one pyarrow filesystem; checkpoints become visible when their manifest lands."""

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

    def upload_file(self, local: Path, rel: str) -> None:
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        if parent:
            self.fs.create_dir(self._path(parent), recursive=True)
        with open(local, "rb") as src, self.fs.open_output_stream(self._path(rel)) as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)

    def download_file(self, rel: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".tmp")
        with self.fs.open_input_stream(self._path(rel)) as src, open(tmp, "wb") as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
        tmp.replace(local)

    # ---- checkpoints ---------------------------------------------------------------------------------
    def list_checkpoints(self) -> list[int]:
        """Steps of the complete checkpoints (manifest present), oldest first."""
        selector = pafs.FileSelector(self._path(CHECKPOINTS), allow_not_found=True)
        steps = []
        for info in self.fs.get_file_info(selector):
            m = _STEP_DIR.match(info.base_name)
            if m and info.type == pafs.FileType.Directory and self.is_file(f"{CHECKPOINTS}/{info.base_name}/{MANIFEST}"):
                steps.append(int(m.group(1)))
        return sorted(steps)

    def upload_checkpoint(self, local_ckpt: Path, step: int) -> None:
        """Copy an active checkpoint file by file; its manifest goes last, so readers never see half of it."""
        rel_dir = f"{CHECKPOINTS}/{checkpoint_dir_name(step)}"
        if self.is_file(f"{rel_dir}/{MANIFEST}"):
            self.fs.delete_file(self._path(f"{rel_dir}/{MANIFEST}"))  # rewriting a step: invisible first
        manifest = json.loads((local_ckpt / MANIFEST).read_text())
        for rel in manifest["files"]:
            self.upload_file(local_ckpt / rel, f"{rel_dir}/{rel}")
        self.upload_file(local_ckpt / MANIFEST, f"{rel_dir}/{MANIFEST}")

    def download_checkpoint(self, step: int, local_ckpt: Path) -> None:
        rel_dir = f"{CHECKPOINTS}/{checkpoint_dir_name(step)}"
        manifest = json.loads(self.read_bytes(f"{rel_dir}/{MANIFEST}"))
        (local_ckpt / MANIFEST).unlink(missing_ok=True)
        for rel in manifest["files"]:
            self.download_file(f"{rel_dir}/{rel}", local_ckpt / rel)
        self.download_file(f"{rel_dir}/{MANIFEST}", local_ckpt / MANIFEST)

    def prune(self, keep: int) -> list[int]:
        """Delete all but the newest `keep` complete checkpoints (manifest first, so each vanishes whole)."""
        steps = self.list_checkpoints()
        removed = steps[:-keep] if keep > 0 else []
        for step in removed:
            rel_dir = f"{CHECKPOINTS}/{checkpoint_dir_name(step)}"
            self.fs.delete_file(self._path(f"{rel_dir}/{MANIFEST}"))
            self.fs.delete_dir(self._path(rel_dir))
        return removed
