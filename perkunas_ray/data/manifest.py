"""The versioned manifest.json of a prepared data dir: tokenizer, dtype, shapes and checksums of every shard."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perkunas_ray.data.dtypes import SUPPORTED_TOKEN_DTYPES
from perkunas_ray.errors import DataError

FORMAT_NAME = "perkunas_ray.token_shards"
FORMAT_VERSION = 1
MANIFEST_FILE_NAME = "manifest.json"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class ShardInfo:
    """One .npy shard: its file name (relative to the data dir), block count and sha256 of its bytes."""

    file_name: str
    num_blocks: int
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    """Counts for one split; num_tokens includes the EOS after every document, before packing."""

    num_documents: int
    num_tokens: int
    num_blocks: int
    num_dropped_tokens: int
    shards: list[ShardInfo] = field(default_factory=list)


@dataclass(frozen=True)
class SourceInfo:
    """A corpus file that fed a split; sha256 is None for files too large to hash cheaply."""

    path: str
    format: str
    split: str  # train | val | train+val (split per document by hash)
    size_bytes: int
    sha256: str | None


@dataclass(frozen=True)
class DataManifest:
    """Everything a trainer needs to trust and read the shards of a prepared data dir."""

    tokenizer_file: str
    tokenizer_sha256: str
    vocab_size: int
    eos_id: int
    pad_id: int | None
    dtype: str
    seq_len: int
    splits: dict[str, SplitInfo]
    total_tokens: int
    dropped_tail_tokens: int
    sources: list[SourceInfo] = field(default_factory=list)
    special_token_ids: dict[str, int] = field(default_factory=dict)
    num_skipped_documents: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def block_len(self) -> int:
        """Tokens per block: seq_len inputs plus the one extra target token."""
        return self.seq_len + 1

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, **dataclasses.asdict(self)}


def _need(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise DataError(f"{where}: missing field {key!r}")
    value = data[key]
    bad_bool = isinstance(value, bool) and kind in (int, (int, type(None)))
    if bad_bool or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {key!r} must be {names}, got {value!r}")
    return value


def _count(data: dict[str, Any], key: str, where: str) -> int:
    value = _need(data, key, int, where)
    if value < 0:
        raise DataError(f"{where}: field {key!r} must be >= 0, got {value}")
    return value


def _plain_name(data: dict[str, Any], key: str, where: str) -> str:
    """A file name inside the data dir: no folder part, no `..`, not absolute (a manifest never leads outside)."""
    name = _need(data, key, str, where)
    if not name or Path(name).name != name or name in (".", "..") or "\\" in name:
        raise DataError(f"{where}: {key} must be a plain file name inside the data dir, got {name!r}")
    return name


def _shard_from_dict(data: Any, where: str) -> ShardInfo:
    if not isinstance(data, dict):
        raise DataError(f"{where}: must be an object, got {data!r}")
    name = _plain_name(data, "file_name", where)
    return ShardInfo(file_name=name, num_blocks=_count(data, "num_blocks", where),
                     sha256=_need(data, "sha256", str, where))


def _split_from_dict(data: Any, where: str) -> SplitInfo:
    if not isinstance(data, dict):
        raise DataError(f"{where}: must be an object, got {data!r}")
    shards_raw = _need(data, "shards", list, where)
    shards = [_shard_from_dict(s, f"{where}.shards[{i}]") for i, s in enumerate(shards_raw)]
    split = SplitInfo(num_documents=_count(data, "num_documents", where), num_tokens=_count(data, "num_tokens", where),
                      num_blocks=_count(data, "num_blocks", where),
                      num_dropped_tokens=_count(data, "num_dropped_tokens", where), shards=shards)
    if sum(s.num_blocks for s in shards) != split.num_blocks:
        raise DataError(f"{where}: num_blocks is {split.num_blocks} but its shards hold "
                        f"{sum(s.num_blocks for s in shards)}")
    return split


def _source_from_dict(data: Any, where: str) -> SourceInfo:
    if not isinstance(data, dict):
        raise DataError(f"{where}: must be an object, got {data!r}")
    return SourceInfo(path=_need(data, "path", str, where), format=_need(data, "format", str, where),
                      split=_need(data, "split", str, where), size_bytes=_count(data, "size_bytes", where),
                      sha256=_need(data, "sha256", (str, type(None)), where))


def manifest_from_dict(data: Any, where: str = MANIFEST_FILE_NAME) -> DataManifest:
    """Validate a parsed manifest (format, version, every field's type) and build a DataManifest."""
    if not isinstance(data, dict):
        raise DataError(f"{where}: must hold a JSON object")
    if data.get("format") != FORMAT_NAME:
        raise DataError(f"{where}: format is {data.get('format')!r}, expected {FORMAT_NAME!r}")
    version = _need(data, "format_version", int, where)
    if version != FORMAT_VERSION:
        raise DataError(f"{where}: format_version {version} is not supported (this perkunas_ray reads "
                        f"{FORMAT_VERSION}); re-run `perkunas prepare`")
    dtype = _need(data, "dtype", str, where)
    if dtype not in SUPPORTED_TOKEN_DTYPES:
        raise DataError(f"{where}: dtype {dtype!r} is not one of {', '.join(SUPPORTED_TOKEN_DTYPES)}")
    seq_len = _count(data, "seq_len", where)
    vocab_size = _count(data, "vocab_size", where)
    if seq_len == 0 or vocab_size == 0:
        raise DataError(f"{where}: seq_len and vocab_size must be > 0, got {seq_len} and {vocab_size}")
    if vocab_size > np.iinfo(np.dtype(dtype)).max + 1:
        raise DataError(f"{where}: vocab_size {vocab_size} does not fit dtype {dtype}")
    splits_raw = _need(data, "splits", dict, where)
    unknown = sorted(set(splits_raw) - set(SPLITS))
    if unknown or "train" not in splits_raw:
        raise DataError(f"{where}: splits must be 'train' and optionally 'val', got {sorted(splits_raw)}")
    special = _need(data, "special_token_ids", dict, where) if "special_token_ids" in data else {}
    manifest = DataManifest(
        tokenizer_file=_plain_name(data, "tokenizer_file", where),
        tokenizer_sha256=_need(data, "tokenizer_sha256", str, where),
        vocab_size=vocab_size,
        eos_id=_count(data, "eos_id", where),
        pad_id=_need(data, "pad_id", (int, type(None)), where),
        dtype=dtype,
        seq_len=seq_len,
        splits={name: _split_from_dict(raw, f"{where}: splits.{name}") for name, raw in splits_raw.items()},
        total_tokens=_count(data, "total_tokens", where),
        dropped_tail_tokens=_count(data, "dropped_tail_tokens", where),
        sources=[_source_from_dict(s, f"{where}: sources[{i}]")
                 for i, s in enumerate(_need(data, "sources", list, where))],
        special_token_ids={str(k): int(v) for k, v in special.items()},
        num_skipped_documents=_count(data, "num_skipped_documents", where) if "num_skipped_documents" in data else 0,
        settings=dict(data.get("settings") or {}),
        format_version=version,
    )
    if manifest.eos_id >= vocab_size:
        raise DataError(f"{where}: eos_id {manifest.eos_id} is outside the vocab of {vocab_size}")
    return manifest


def manifest_path(data_dir: str | Path) -> Path:
    """The manifest.json of a data dir (a path to the manifest itself is accepted too)."""
    path = Path(data_dir).expanduser()
    return path if path.name == MANIFEST_FILE_NAME and not path.is_dir() else path / MANIFEST_FILE_NAME


def load_manifest(data_dir: str | Path) -> DataManifest:
    """Read and validate `data_dir/manifest.json`; DataError names the file and the problem."""
    path = manifest_path(data_dir)
    if not path.is_file():
        raise DataError(f"{path}: no data manifest here; run `perkunas prepare --output-dir {path.parent}` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    return manifest_from_dict(data, str(path))


def write_manifest(data_dir: str | Path, manifest: DataManifest) -> Path:
    """Write manifest.json atomically (temp file + rename), so a reader never sees half of it."""
    path = Path(data_dir) / MANIFEST_FILE_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
