"""Helpers for the export tests (no tests here): a tiny BPE tokenizer and a run dir holding a briefly trained model."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tokenizers import Tokenizer

from perkunas_ray.checkpoint.format import write_model_run_dir
from perkunas_ray.config import ModelConfig
from perkunas_ray.data.tokenizer import train_tokenizer
from perkunas_ray.model.decoder import DecoderLM, build_model

SHARED_STORIES = (Path(__file__).resolve().parents[3] / "shared" / "data" / "tinystories"
                  / "TinyStoriesV2-GPT4-train-random-6341.txt")
BUNDLED_STORIES = Path(__file__).resolve().parents[2] / "perkunas_ray" / "corpus" / "tinystories_sample.txt"
PROMPTS = ["Once upon a time, there was a little", "Lily and Ben went to the park.", "The dog said, \"Hello!\""]


@functools.lru_cache(maxsize=1)
def story_lines(n: int = 400) -> tuple[str, ...]:
    path = SHARED_STORIES if SHARED_STORIES.is_file() else BUNDLED_STORIES
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return tuple(lines[:n])


@functools.lru_cache(maxsize=1)
def tiny_tokenizer_json() -> str:
    """A byte-level BPE with our special tokens (<|endoftext|>=0, <|pad|>=1, ...), vocab 512."""
    return train_tokenizer(story_lines(), vocab_size=512).to_str()


def tiny_tokenizer() -> Tokenizer:
    return Tokenizer.from_str(tiny_tokenizer_json())


def tiny_export_config(**overrides: object) -> ModelConfig:
    base = dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=128,
                layers_per_shard=1, lm_head_chunk_tokens=64, rope_theta=10000.0, norm_eps=1e-5, init_std=0.1)
    base.update(overrides)
    return ModelConfig(**base).validate()  # type: ignore[arg-type]


def train_briefly(model: DecoderLM, tokenizer: Tokenizer, steps: int, seq_len: int = 64, batch: int = 8,
                  seed: int = 0) -> int:
    """Plain AdamW on TinyStories lines so weights (norms included) move away from their init; returns tokens seen."""
    eos = tokenizer.token_to_id("<|endoftext|>")
    ids: list[int] = []
    lines = story_lines()
    for start in range(0, len(lines), 8):  # EOS between stretches of text, so it is not the easy guess
        ids += tokenizer.encode("\n".join(lines[start:start + 8])).ids + [eos]
    data = torch.tensor(ids)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=gen)
        x = torch.stack([data[s:s + seq_len] for s in starts])
        y = torch.stack([data[s + 1:s + seq_len + 1] for s in starts])
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return steps * batch * seq_len


def make_run_dir(root: Path, cfg: ModelConfig, train_steps: int = 30, seed: int = 0) -> Path:
    """RUN/config.json, RUN/tokenizer.json and one complete checkpoint at step `train_steps`."""
    run_dir = Path(root)
    torch.manual_seed(seed)
    model = build_model(cfg, seed=seed)
    tokenizer = tiny_tokenizer()
    tokens_seen = train_briefly(model, tokenizer, train_steps, seed=seed) if train_steps else 0
    return write_model_run_dir(run_dir, cfg, model.state_dict(), tokenizer, step=train_steps,
                               tokens_seen=tokens_seen)


def load_our_model(run_dir: Path) -> DecoderLM:
    """The model of a run dir's newest checkpoint, as our own loader gives it (fp32, eval)."""
    from perkunas_ray.model_source import load_inference_model

    return load_inference_model(run_dir).model
