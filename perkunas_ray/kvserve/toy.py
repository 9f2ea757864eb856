"""Run dirs of random-weight DecoderLMs with a small BPE, for tests, benchmarks and trying the server."""

from __future__ import annotations

from pathlib import Path

from perkunas_ray.config import ModelConfig


def tiny_model_config(vocab_size: int = 512, max_seq_len: int = 512) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                       max_seq_len=max_seq_len, layers_per_shard=1).validate()


def make_model_run_dir(run_dir: str | Path, cfg: ModelConfig, num_lines: int = 300, seed: int = 0) -> Path:
    """Write a loadable run dir: `cfg`, a BPE of up to cfg.vocab_size tokens trained on `num_lines` bundled story
    lines, and one checkpoint of a freshly initialised model (seeded)."""
    from perkunas_ray.checkpoint.format import write_model_run_dir
    from perkunas_ray.engine.toy import sample_lines, toy_tokenizer
    from perkunas_ray.model import build_model

    tokenizer = toy_tokenizer(sample_lines(num_lines), vocab_size=cfg.vocab_size)
    return write_model_run_dir(Path(run_dir), cfg, build_model(cfg, seed=seed).state_dict(), tokenizer, step=1)


def make_tiny_run_dir(run_dir: str | Path, vocab_size: int = 512, max_seq_len: int = 512, num_lines: int = 300,
                      seed: int = 0) -> Path:
    """A run dir of the tiny test model (see `make_model_run_dir`)."""
    return make_model_run_dir(run_dir, tiny_model_config(vocab_size, max_seq_len), num_lines, seed)
