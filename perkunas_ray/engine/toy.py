"""Tiny in-process models and tokenizers for tests, benchmarks and demos (random weights, no files)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from perkunas_ray.config import ModelConfig
from perkunas_ray.engine.interface import KVPolicy
from perkunas_ray.model.decoder import build_model

SHARED_STORIES = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinystories" / \
    "TinyStoriesV2-GPT4-train-random-6341.txt"


def sample_lines(num_lines: int = 300, path: str | Path | None = None) -> list[str]:
    """Non-empty lines of TinyStories: from `path`, the shared data set if present, else the bundled slice."""
    if path is None:
        path = SHARED_STORIES if SHARED_STORIES.is_file() else None
    if path is None:
        text = (resources.files("perkunas_ray") / "corpus" / "tinystories_sample.txt").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() != "<|endoftext|>"]
    return lines[:num_lines]


def toy_tokenizer(lines: list[str] | None = None, vocab_size: int = 512) -> Any:
    """A byte-level BPE (EOS `<|endoftext|>` = id 0) trained on a few hundred story lines."""
    from perkunas_ray.data.tokenizer import train_tokenizer

    return train_tokenizer(lines if lines is not None else sample_lines(), vocab_size, min_frequency=1)


def toy_engine(cfg: ModelConfig, policy: KVPolicy | None = None, seed: int = 0, tokenizer: Any = None,
               **kwargs: Any) -> Any:
    """A NativeEngine over a freshly initialised `build_model(cfg, seed)`; EOS is token 0."""
    from perkunas_ray.engine.native import NativeEngine

    tokenizer = tokenizer if tokenizer is not None else toy_tokenizer(vocab_size=min(cfg.vocab_size, 512))
    return NativeEngine(build_model(cfg, seed=seed), tokenizer, 0, policy, **kwargs)
