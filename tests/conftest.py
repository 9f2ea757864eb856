"""Shared test fixtures: tiny model configs and the shared data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from perkunas_ray.config import ModelConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build the engine's C++ CPU kernels before any test's clock runs: about 30 s on a machine's first run (then
    cached), which would otherwise land inside whichever test (or Serve replica) builds an engine first."""
    from perkunas_ray.engine.cpu_kernels import cpu_kernels

    cpu_kernels()


def tiny_config(**overrides: object) -> ModelConfig:
    base = dict(vocab_size=97, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=64,
                layers_per_shard=1, lm_head_chunk_tokens=16)
    base.update(overrides)
    return ModelConfig(**base).validate()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny ops on a busy 2-core machine: OpenMP hand-offs cost milliseconds each, one thread costs none."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared data dir (vocab ~400, seq_len 32) from the first ~120 KB of the bundled corpus."""
    from perkunas_ray.data import bundled_corpus_path, prepare_corpus

    root = tmp_path_factory.mktemp("tiny_data")
    text = bundled_corpus_path().read_text(encoding="utf-8")
    cut = text.index("<|endoftext|>", 120_000) + len("<|endoftext|>")
    corpus = root / "corpus.txt"
    corpus.write_text(text[:cut], encoding="utf-8")
    out = root / "prepared"
    prepare_corpus(out, corpus, vocab_size=400, seq_len=32, val_fraction=0.1, show_progress=False)
    return out
