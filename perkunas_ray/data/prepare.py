"""The prepare pipeline: read corpus, train or load the tokenizer, tokenize, split, pack, write shards + manifest."""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

import perkunas_ray
from perkunas_ray.data.dtypes import choose_token_dtype
from perkunas_ray.data.manifest import (
    MANIFEST_FILE_NAME,
    DataManifest,
    SourceInfo,
    SplitInfo,
    write_manifest,
)
from perkunas_ray.data.packing import BlockPacker
from perkunas_ray.data.publish import staged_data_dir
from perkunas_ray.data.readers import DEFAULT_DELIMITER, DEFAULT_TEXT_COLUMN, ReaderOptions, iter_documents
from perkunas_ray.data.resources import bundled_corpus_path
from perkunas_ray.data.shards import TokenShardWriter
from perkunas_ray.data.sources import MAX_HASHED_SOURCE_BYTES, SourceFile, file_sha256, resolve_sources
from perkunas_ray.data.split import is_validation_document
from perkunas_ray.data.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    TOKENIZER_FILE_NAME,
    TokenizerInfo,
    describe_tokenizer,
    load_tokenizer,
    resolve_tokenizer_file,
    train_tokenizer,
)
from perkunas_ray.errors import ConfigError, DataError


def _path_text(value: Any, where: str) -> str:
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise ConfigError(f"{where} must be a path, got {value!r}")


@dataclass
class PrepareConfig:
    """Options of `perkunas prepare`; train_data None means the corpus bundled with the package."""

    output_dir: str
    train_data: str | list[str] | None = None  # file, folder, glob, or a list of them
    val_data: str | list[str] | None = None
    tokenizer_path: str | None = None
    vocab_size: int = DEFAULT_VOCAB_SIZE
    seq_len: int = 256
    blocks_per_shard: int = 8192
    val_fraction: float = 0.05
    seed: int = 0
    delimiter: str = DEFAULT_DELIMITER
    text_column: str = DEFAULT_TEXT_COLUMN
    parquet_batch_rows: int = 1024
    tokenization_batch_size: int = 1024
    min_text_chars: int = 1
    overwrite: bool = False

    def validate(self) -> PrepareConfig:
        for name in ("output_dir", "train_data", "val_data", "tokenizer_path"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)) and name in ("train_data", "val_data"):
                value = [_path_text(v, f"prepare.{name}") for v in value]
                setattr(self, name, value[0] if len(value) == 1 else value)
            elif value is not None:
                setattr(self, name, _path_text(value, f"prepare.{name}"))  # keep the config JSON-serialisable
        if not self.output_dir:
            raise ConfigError("prepare.output_dir must be given")
        for name in ("vocab_size", "seq_len", "blocks_per_shard", "parquet_batch_rows", "tokenization_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"prepare.{name} must be a positive integer, got {value!r}")
        if isinstance(self.min_text_chars, bool) or not isinstance(self.min_text_chars, int) or self.min_text_chars < 0:
            raise ConfigError(f"prepare.min_text_chars must be an integer >= 0, got {self.min_text_chars!r}")
        if not isinstance(self.val_fraction, (int, float)) or not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"prepare.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 1 << 63:
            raise ConfigError(f"prepare.seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not self.text_column:
            raise ConfigError("prepare.text_column must not be empty")
        return self


@dataclass(frozen=True)
class PrepareSummary:
    """What prepare did: counts per split, the files written and how long it took."""

    output_dir: Path
    manifest_path: Path
    tokenizer_path: Path
    tokenizer_trained: bool
    vocab_size: int
    dtype: str
    seq_len: int
    num_documents: dict[str, int]
    num_tokens: dict[str, int]
    num_blocks: dict[str, int]
    num_skipped_documents: int
    dropped_tail_tokens: int
    tokenizer_seconds: float
    tokenize_seconds: float
    total_seconds: float

    @property
    def total_documents(self) -> int:
        return sum(self.num_documents.values())

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens.values())

    @property
    def tokens_per_second(self) -> float:
        """Throughput of the tokenize + pack + write pass (tokenizer training not included)."""
        return self.total_tokens / max(self.tokenize_seconds, 1e-9)

    def format(self) -> str:
        splits = ", ".join(f"{s} {self.num_blocks[s]:,}" for s in self.num_blocks)
        tokenizer = "trained" if self.tokenizer_trained else "given"
        return "\n".join([
            f"documents:  {self.total_documents:,} ("
            + ", ".join(f"{s} {n:,}" for s, n in self.num_documents.items())
            + f"; {self.num_skipped_documents:,} skipped as too short)",
            f"tokens:     {self.total_tokens:,} (incl. one EOS per document; "
            f"{self.dropped_tail_tokens:,} tail tokens dropped)",
            f"speed:      {self.tokens_per_second:,.0f} tokens/s ({self.tokenize_seconds:.1f} s tokenizing, "
            f"{self.tokenizer_seconds:.1f} s tokenizer training, {self.total_seconds:.1f} s in all)",
            f"blocks:     {splits} (seq_len {self.seq_len} + 1, {self.dtype})",
            f"tokenizer:  {self.tokenizer_path} ({tokenizer}, vocab {self.vocab_size:,})",
            f"output dir: {self.output_dir}",
        ])


@dataclass
class _DocumentStream:
    """Documents of all sources tagged with their split, skipping those shorter than min_text_chars."""

    train_sources: list[SourceFile]
    val_sources: list[SourceFile]
    config: PrepareConfig
    num_skipped: int = 0
    num_per_split: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})

    def __iter__(self) -> Iterator[tuple[str, str]]:
        self.num_skipped, self.num_per_split = 0, {"train": 0, "val": 0}
        options = ReaderOptions(self.config.delimiter, self.config.text_column, self.config.parquet_batch_rows)
        min_chars = max(1, self.config.min_text_chars)
        tagged = [(s, "train") for s in self.train_sources] + [(s, "val") for s in self.val_sources]
        for source, fixed_split in tagged:
            try:
                for text in iter_documents(source, options):
                    num_chars = len(text.strip())
                    if num_chars < min_chars:
                        self.num_skipped += num_chars > 0  # blank pieces (e.g. after the last delimiter) are no documents
                        continue
                    split = fixed_split
                    if not self.val_sources and is_validation_document(text, self.config.val_fraction,
                                                                       self.config.seed):
                        split = "val"
                    self.num_per_split[split] += 1
                    yield split, text
            except OSError as exc:
                raise DataError(f"{source.path}: cannot read ({exc})") from exc


def _prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"{output_dir}: output dir is a file")
    if (output_dir / MANIFEST_FILE_NAME).exists() and not overwrite:
        raise DataError(f"{output_dir}: already holds a prepared data set ({MANIFEST_FILE_NAME}); "
                        f"pass --overwrite to replace it")


def _tokenizer_info(tokenizer: Tokenizer, where: str | Path) -> tuple[TokenizerInfo, np.dtype]:
    info = describe_tokenizer(tokenizer, where)
    try:
        dtype = choose_token_dtype(info.vocab_size)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from exc
    return info, dtype


def _save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tokenizer.save(str(tmp))
    os.replace(tmp, path)


def _source_infos(sources: list[SourceFile], split: str) -> list[SourceInfo]:
    infos = []
    for source in sources:
        size = source.path.stat().st_size
        digest = file_sha256(source.path) if size <= MAX_HASHED_SOURCE_BYTES else None
        infos.append(SourceInfo(path=str(source.path.resolve()), format=source.format, split=split,
                                size_bytes=size, sha256=digest))
    return infos


def _encode_batch(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # fast: no offsets
    return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]


def _flatten_with_eos(ids: list[list[int]], eos_id: int, dtype: np.dtype) -> np.ndarray:
    total = sum(map(len, ids)) + len(ids)
    return np.fromiter(itertools.chain.from_iterable(itertools.chain(doc, (eos_id,)) for doc in ids),
                       dtype=dtype, count=total)


def _tokenize_and_write(stream: _DocumentStream, tokenizer: Tokenizer, info: TokenizerInfo, dtype: np.dtype,
                        config: PrepareConfig, output_dir: Path, show_progress: bool) -> dict[str, SplitInfo]:
    splits = ("train", "val")
    packers = {s: BlockPacker(config.seq_len, dtype) for s in splits}
    writers = {s: TokenShardWriter(output_dir, s, config.seq_len + 1, dtype, config.blocks_per_shard) for s in splits}
    num_tokens = dict.fromkeys(splits, 0)

    def flush(batch: dict[str, list[str]]) -> None:
        for split, texts in batch.items():
            if texts:
                tokens = _flatten_with_eos(_encode_batch(tokenizer, texts), info.eos_id, dtype)
                num_tokens[split] += len(tokens)
                writers[split].add(packers[split].add(tokens))
                texts.clear()

    batch: dict[str, list[str]] = {s: [] for s in splits}
    with tqdm(desc="tokenize", unit=" docs", disable=not show_progress, file=sys.stderr) as bar:
        for split, text in stream:
            batch[split].append(text)
            if len(batch[split]) >= config.tokenization_batch_size:
                flush(batch)
                bar.update(config.tokenization_batch_size)
                bar.set_postfix(tokens=f"{sum(num_tokens.values()):,}", refresh=False)
        pending = sum(map(len, batch.values()))
        flush(batch)
        bar.update(pending)
    result = {}
    for split in splits:
        dropped = packers[split].finish()
        shards = writers[split].finish()
        result[split] = SplitInfo(num_documents=stream.num_per_split[split], num_tokens=num_tokens[split],
                                  num_blocks=sum(s.num_blocks for s in shards), num_dropped_tokens=dropped,
                                  shards=shards)
    return result


def prepare_corpus(output_dir: str | Path, train_data: str | Path | list[str | Path] | None = None, *,
                   show_progress: bool | None = None, **options: Any) -> PrepareSummary:
    """Prepare token shards in `output_dir`; `options` are the other PrepareConfig fields."""
    try:
        config = PrepareConfig(output_dir=output_dir, train_data=train_data, **options)  # type: ignore[arg-type]
    except TypeError as exc:
        known = ", ".join(f.name for f in dataclasses.fields(PrepareConfig))
        raise ConfigError(f"prepare_corpus: {exc}; known options: {known}") from exc
    return run_prepare(config, show_progress=show_progress)


def run_prepare(config: PrepareConfig, show_progress: bool | None = None) -> PrepareSummary:
    """Run the pipeline for a PrepareConfig (validated here); the manifest is written last.

    The data set is built in a temp dir beside `output_dir` and moved in only when complete, so a failed
    run (bad corpus, disk full) leaves an earlier data set there untouched.
    """
    started = time.perf_counter()
    config.validate()
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    out = Path(config.output_dir).expanduser()
    _prepare_output_dir(out, config.overwrite)
    train_data = config.train_data or str(bundled_corpus_path())
    train_sources = resolve_sources(train_data)
    train_spec = " ".join(train_data) if isinstance(train_data, list) else train_data  # for messages
    val_sources = resolve_sources(config.val_data) if config.val_data else []
    stream = _DocumentStream(train_sources, val_sources, config)

    given_file = resolve_tokenizer_file(config.tokenizer_path) if config.tokenizer_path else None
    if given_file is not None:
        tokenizer = load_tokenizer(given_file)
        info, dtype = _tokenizer_info(tokenizer, given_file)
    else:
        choose_token_dtype(config.vocab_size)  # fail on an impossible vocab before training
    with staged_data_dir(out) as staging:
        tokenizer_file = staging / TOKENIZER_FILE_NAME
        tokenizer_started = time.perf_counter()
        if given_file is not None:
            shutil.copyfile(given_file, tokenizer_file)
        else:
            train_texts = (text for split, text in stream if split == "train")
            tokenizer = train_tokenizer(train_texts, config.vocab_size, show_progress=show_progress)
            if stream.num_per_split["train"] == 0:
                raise DataError(f"{train_spec}: empty corpus, no train documents of >= "
                                f"{max(1, config.min_text_chars)} characters")
            _save_tokenizer(tokenizer, tokenizer_file)
            info, dtype = _tokenizer_info(tokenizer, tokenizer_file)
        tokenizer_seconds = time.perf_counter() - tokenizer_started

        tokenize_started = time.perf_counter()
        splits = _tokenize_and_write(stream, tokenizer, info, dtype, config, staging, show_progress)
        tokenize_seconds = time.perf_counter() - tokenize_started
        if splits["train"].num_documents == 0:
            raise DataError(f"{train_spec}: empty corpus, no train documents of >= {max(1, config.min_text_chars)} "
                            f"characters")
        if val_sources and splits["val"].num_documents == 0:
            raise DataError(f"{config.val_data}: empty validation corpus, no documents")
        if splits["train"].num_blocks == 0:
            raise DataError(f"{train_spec}: only {splits['train'].num_tokens} train tokens, fewer than one block of "
                            f"seq_len + 1 = {config.seq_len + 1}; lower --seq-len or add text")

        sources = _source_infos(train_sources, "train" if val_sources else "train+val") + _source_infos(val_sources, "val")
        settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("output_dir", "overwrite")}
        settings.update(tokenizer_trained=given_file is None, created_by=f"perkunas_ray {perkunas_ray.__version__}")
        manifest = DataManifest(
            tokenizer_file=TOKENIZER_FILE_NAME, tokenizer_sha256=file_sha256(tokenizer_file),
            vocab_size=info.vocab_size, eos_id=info.eos_id, pad_id=info.pad_id, dtype=dtype.name,
            seq_len=config.seq_len, splits=splits, total_tokens=sum(s.num_tokens for s in splits.values()),
            dropped_tail_tokens=sum(s.num_dropped_tokens for s in splits.values()), sources=sources,
            special_token_ids=info.special_token_ids, num_skipped_documents=stream.num_skipped, settings=settings,
        )
        write_manifest(staging, manifest)
    return PrepareSummary(
        output_dir=out, manifest_path=out / MANIFEST_FILE_NAME, tokenizer_path=out / TOKENIZER_FILE_NAME,
        tokenizer_trained=given_file is None, vocab_size=info.vocab_size, dtype=dtype.name, seq_len=config.seq_len,
        num_documents={s: v.num_documents for s, v in splits.items()},
        num_tokens={s: v.num_tokens for s, v in splits.items()},
        num_blocks={s: v.num_blocks for s, v in splits.items()},
        num_skipped_documents=stream.num_skipped, dropped_tail_tokens=manifest.dropped_tail_tokens,
        tokenizer_seconds=tokenizer_seconds, tokenize_seconds=tokenize_seconds,
        total_seconds=time.perf_counter() - started,
    )
