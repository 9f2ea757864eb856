"""Where an evaluation's text comes from: the run's recorded data dirs, or paths the user gives, checked
against the model's tokenizer."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from perkunas_ray.data import (
    MANIFEST_FILE_NAME,
    PackedTokenDataset,
    ReaderOptions,
    iter_documents,
    resolve_sources,
)
from perkunas_ray.data.sources import file_sha256
from perkunas_ray.errors import DataError
from perkunas_ray.eval.heldout import HeldoutSet, block_rows, text_rows
from perkunas_ray.model_source import LoadedModel, is_hf_package


def recorded_data_dirs(source: str | Path) -> tuple[str, str]:
    """(validation data dir, training data dir) a run dir's config.json records; ('', '') for a package."""
    config = Path(source) / "config.json"
    if is_hf_package(Path(source)) or not config.is_file():
        return "", ""
    data = json.loads(config.read_text())
    train_dir = data.get("data", {}).get("data_dir") or data.get("train", {}).get("data_dir", "")
    return data.get("train", {}).get("val_data_dir") or train_dir, train_dir


def locate(recorded: str, run_dir: str | Path) -> Path | None:
    """A recorded (maybe relative) data dir: as is, else relative to each folder above the run dir.

    Trainers record the path as given, relative to where they ran; the main job runs beside `runs/`.
    """
    if not recorded:
        return None
    path = Path(recorded)
    candidates = [path, *(parent / path for parent in Path(run_dir).resolve().parents)]  # all equal if absolute
    return next((c for c in candidates if (c / MANIFEST_FILE_NAME).is_file()), None)


def open_split(data_dir: str | Path, split: str, loaded: LoadedModel) -> PackedTokenDataset:
    """A prepared split whose tokens are the model's: same tokenizer.json, ids inside its vocab."""
    dataset = PackedTokenDataset(data_dir, split)
    tokenizer_file = Path(loaded.source) / "tokenizer.json"
    if dataset.manifest.tokenizer_sha256 != file_sha256(tokenizer_file):
        raise DataError(f"{dataset.data_dir / MANIFEST_FILE_NAME}: its tokens come from another tokenizer than "
                        f"the model's {tokenizer_file} (tokenizer sha256 {dataset.manifest.tokenizer_sha256[:12]}... "
                        f"differs); evaluate raw text instead, or data prepared with this model's tokenizer")
    if dataset.vocab_size > loaded.model.config.vocab_size:
        raise DataError(f"{dataset.data_dir}: vocab of {dataset.vocab_size} tokens exceeds the model's "
                        f"{loaded.model.config.vocab_size}")
    return dataset


def heldout_set(loaded: LoadedModel, data: str | Path, text_field: str, limit: int) -> HeldoutSet:
    """The validation split of a prepared data dir, or the documents of .txt / .jsonl / .parquet files."""
    context_len = loaded.model.config.max_seq_len
    if (Path(data) / MANIFEST_FILE_NAME).is_file():
        dataset = open_split(data, "val", loaded)
        if dataset.seq_len > context_len:
            raise DataError(f"{dataset.data_dir}: blocks of {dataset.seq_len} tokens exceed the model's "
                            f"context of {context_len}")
        heldout = block_rows(dataset, loaded.tokenizer, limit)
    else:
        sources = resolve_sources(str(data))
        options = ReaderOptions(text_column=text_field)
        documents = itertools.chain.from_iterable(iter_documents(source, options) for source in sources)
        description = f"{data} (each document after EOS, in non-overlapping windows of {context_len} tokens)"
        heldout = text_rows(documents, loaded.tokenizer, loaded.eos_token_id, context_len, description, limit)
    if not heldout.rows or heldout.num_bytes == 0:
        raise DataError(f"{data}: holds no text to score")
    return heldout
