"""Small data dirs, configs and one-call runs of the streaming runtime, for the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from perkunas_ray.config import ModelConfig, RunConfig
from perkunas_ray.data import bundled_corpus_path, prepare_corpus
from perkunas_ray.stream.build import TrainRun, local_backend, open_run, train
from perkunas_ray.stream.interface import TrainResult
from perkunas_ray.stream.session import has_checkpoints


def small_data_dir(out_dir: Path, num_chars: int = 150_000, vocab_size: int = 300, seq_len: int = 32) -> Path:
    """A prepared data dir from the head of the bundled corpus (well under a second)."""
    out_dir = Path(out_dir)
    if (out_dir / "data" / "manifest.json").is_file():
        return out_dir / "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    text = bundled_corpus_path().read_text(encoding="utf-8")[:num_chars]
    (out_dir / "slice.txt").write_text(text, encoding="utf-8")
    prepare_corpus(out_dir / "data", str(out_dir / "slice.txt"), vocab_size=vocab_size, seq_len=seq_len,
                   show_progress=False)
    return out_dir / "data"


def small_config(data_dir: Path, run_dir: Path, **train: Any) -> RunConfig:
    """A ~50K-parameter model, 3 micro-batches per step, global clipping that triggers."""
    cfg = RunConfig()
    cfg.model = ModelConfig(vocab_size=300, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=48,
                            max_seq_len=32, lm_head_chunk_tokens=48)
    t = cfg.train
    t.data_dir, t.micro_batch_size, t.gradient_accumulation_steps = str(data_dir), 4, 3
    t.max_steps, t.max_grad_norm, t.learning_rate, t.warmup_steps = 10, 0.5, 3e-3, 2
    t.validate_every = t.save_every = 0
    t.max_validation_batches, t.device = 2, "cpu"
    t.dtype = "fp32"  # the exactness tests compare fp32 steps, on a GPU too (auto would be bf16 there)
    cfg.checkpoint.run_dir, cfg.checkpoint.durable_flush_every = str(run_dir), 0
    for key, value in train.items():
        section, _, name = key.partition("__")
        if name:
            setattr(getattr(cfg, section), name, value)
        else:
            setattr(t, key, value)
    return cfg.validate()


def open_or_init(cfg: RunConfig) -> TrainRun:
    """The run of `cfg`, initialised first if its run dir holds no checkpoint."""
    return open_run(cfg, init=not has_checkpoints(cfg.checkpoint.run_dir))


def train_in_process(cfg: RunConfig, verbose: bool = False) -> TrainResult:
    """Init (if needed) and train a run with the in-process backend."""
    return train(open_or_init(cfg), local_backend, verbose)


def train_with_ray(cfg: RunConfig, verbose: bool = False) -> TrainResult:
    """Init (if needed) and train a run on Ray Train workers and the run's actors, in an already initialised Ray."""
    # Imported here so the in-process helpers load where Ray is not installed (the GPU machine has none).
    from actors.driver import train_on_ray

    return train_on_ray(open_or_init(cfg), verbose)


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest per-tensor max |a - b| / max |a| over the tensors of two state dicts (same keys)."""
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp(min=1e-12)) for k in a)
