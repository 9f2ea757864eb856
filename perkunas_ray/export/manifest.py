"""perkunas_export_manifest.json: where an export came from and the sha256 of every file it wrote."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from perkunas_ray import __version__
from perkunas_ray.checkpoint.format import sha256_file
from perkunas_ray.export.source import ExportSource
from perkunas_ray.export.tokenizer_files import write_json

EXPORT_MANIFEST = "perkunas_export_manifest.json"
EXPORT_FORMAT_VERSION = 1


def write_export_manifest(out_dir: Path, source: ExportSource, kind: str, **details: Any) -> dict[str, Any]:
    """Checksum every file already in `out_dir` and write the manifest last."""
    files = {}
    for path in sorted(out_dir.rglob("*")):
        if path.is_file() and path.name != EXPORT_MANIFEST:
            files[path.relative_to(out_dir).as_posix()] = {"sha256": sha256_file(path),
                                                          "num_bytes": path.stat().st_size}
    manifest = {
        "format_version": EXPORT_FORMAT_VERSION,
        "kind": kind,
        "perkunas_version": __version__,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "run_dir": str(source.run_dir.resolve()),
            "checkpoint": source.checkpoint_dir.name,
            "step": source.step,
            "tokens_seen": source.tokens_seen,
            "tokenizer": str(source.tokenizer.path.resolve()),
        },
        **details,
        "files": files,
    }
    write_json(out_dir / EXPORT_MANIFEST, manifest)
    return manifest


def read_export_manifest(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / EXPORT_MANIFEST).read_text(encoding="utf-8"))
