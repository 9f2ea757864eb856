"""Tiny in-process models and tokenizers for tests, benchmarks and demos (random weights, no files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perkunas_ray.config import ModelConfig
from perkunas_ray.data.resources import bundled_corpus_path
from perkunas_ray.data.tokenizer import EOS_TOKEN, EOS_TOKEN_ID, train_tokenizer
from perkunas_ray.engine.interface import KVPolicy
from perkunas_ray.model.decoder import build_model


def sample_lines(num_lines: int = 300, path: str | Path | None = None) -> list[str]:
    """Non-empty story lines of `path` (default: the TinyStories slice bundled with the package)."""
    text = Path(path or bundled_corpus_path()).read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() != EOS_TOKEN]
    return lines[:num_lines]


def toy_tokenizer(lines: list[str] | None = None, vocab_size: int = 512) -> Any:
    """A byte-level BPE (EOS `<|endoftext|>` = EOS_TOKEN_ID) trained on a few hundred story lines."""
    return train_tokenizer(lines if lines is not None else sample_lines(), vocab_size, min_frequency=1)


def toy_engine(cfg: ModelConfig, policy: KVPolicy | None = None, seed: int = 0, tokenizer: Any = None,
               **kwargs: Any) -> Any:
    """A NativeEngine over a freshly initialised `build_model(cfg, seed)`."""
    from perkunas_ray.engine.native import NativeEngine

    tokenizer = tokenizer if tokenizer is not None else toy_tokenizer(vocab_size=min(cfg.vocab_size, 512))
    return NativeEngine(build_model(cfg, seed=seed), tokenizer, EOS_TOKEN_ID, policy, **kwargs)
