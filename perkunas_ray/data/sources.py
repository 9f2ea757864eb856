"""Turn a file, folder or glob into a sorted list of corpus files, and fingerprint them."""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from perkunas_ray.errors import DataError

SUPPORTED_SUFFIXES: dict[str, str] = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
# Sources larger than this are fingerprinted by size only: hashing them would double the read time.
MAX_HASHED_SOURCE_BYTES = 1 << 30
_HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    """One corpus file and the reader its suffix selects."""

    path: Path
    format: str  # txt | jsonl | parquet


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _source_for(path: Path) -> SourceFile:
    fmt = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unsupported corpus file type {path.suffix or '(no suffix)'!r}; "
                        f"expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    return SourceFile(path=path, format=fmt)


def _supported_files(paths: list[Path]) -> list[SourceFile]:
    return [SourceFile(p, SUPPORTED_SUFFIXES[p.suffix.lower()]) for p in sorted(paths)
            if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES]


def resolve_sources(spec: str | Path | Sequence[str | Path]) -> list[SourceFile]:
    """Expand `spec` (a file, a folder searched recursively, a glob, or a list of these) into corpus files.

    Each folder or glob is sorted; a list keeps its order and drops files already listed.
    """
    if not isinstance(spec, (str, Path)):
        seen: set[Path] = set()
        merged = []
        for item in spec:
            for source in resolve_sources(item):
                if source.path.resolve() not in seen:
                    seen.add(source.path.resolve())
                    merged.append(source)
        if not merged:
            raise DataError("no corpus path given")
        return merged
    text = str(spec)
    if not text:
        raise DataError("no corpus path given")
    path = Path(text).expanduser()
    if path.is_file():
        return [_source_for(path)]
    if path.is_dir():
        found = _supported_files(list(path.rglob("*")))
        if not found:
            raise DataError(f"{path}: folder holds no corpus files ({', '.join(SUPPORTED_SUFFIXES)})")
        return found
    if glob.has_magic(text):
        matches = [Path(m) for m in glob.glob(str(path), recursive=True)]
        found = _supported_files(matches)
        if not found:
            raise DataError(f"{text}: glob matches no corpus files ({', '.join(SUPPORTED_SUFFIXES)})")
        return found
    raise DataError(f"{path}: no such file or folder")
