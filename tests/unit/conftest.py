"""Fixtures the engine unit tests share: a small native engine (random weights) and its toy tokenizer."""

from __future__ import annotations

from typing import Any

import pytest

from perkunas_ray.config import ModelConfig
from perkunas_ray.engine.interface import KVPolicy
from perkunas_ray.engine.native import NativeEngine
from perkunas_ray.engine.toy import sample_lines, toy_tokenizer
from perkunas_ray.model.decoder import build_model


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return toy_tokenizer(sample_lines(300), 512)


@pytest.fixture
def engine(tokenizer: Any) -> NativeEngine:
    cfg = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                      max_seq_len=128).validate()
    return NativeEngine(build_model(cfg, seed=10), tokenizer, 0, KVPolicy(block_size=4, num_blocks=64))
