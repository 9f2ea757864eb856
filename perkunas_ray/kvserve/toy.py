"""A tiny run dir (random-weight DecoderLM + a small BPE) for tests, benchmarks and trying the server."""

from __future__ import annotations

import shutil
from pathlib import Path

from perkunas_ray.config import ModelConfig


def tiny_model_config(vocab_size: int = 512, max_seq_len: int = 512) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                       max_seq_len=max_seq_len, layers_per_shard=1).validate()


def make_tiny_run_dir(run_dir: str | Path, vocab_size: int = 512, max_seq_len: int = 512, num_lines: int = 300,
                      seed: int = 0) -> Path:
    """Write a loadable run dir: config, tokenizer.json and one checkpoint of a freshly initialised model."""
    from perkunas_ray.checkpoint.format import save_run_config, write_checkpoint
    from perkunas_ray.config import RunConfig
    from perkunas_ray.engine.toy import sample_lines, toy_tokenizer
    from perkunas_ray.model import build_model
    from perkunas_ray.model.shards import split_state_dict

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = tiny_model_config(vocab_size, max_seq_len)
    tokenizer = toy_tokenizer(sample_lines(num_lines), vocab_size=vocab_size)
    tokenizer.save(str(run_dir / "tokenizer.json"))
    model = build_model(cfg, seed=seed)
    save_run_config(run_dir, RunConfig(model=cfg))
    ckpt = run_dir / "checkpoints" / "step_00000001"
    if ckpt.exists():
        shutil.rmtree(ckpt)
    write_checkpoint(ckpt, split_state_dict(cfg, model.state_dict()), {}, {"step": 1, "tokens_seen": 0})
    return run_dir
