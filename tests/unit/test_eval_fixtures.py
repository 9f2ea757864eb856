"""Helpers for the eval tests (no tests here): a small run dir and data prepared with its tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from perkunas_ray.checkpoint.format import write_model_run_dir
from perkunas_ray.config import ModelConfig
from perkunas_ray.data import prepare_corpus
from perkunas_ray.model.decoder import DecoderLM, build_model
from tests.unit.test_export_fixtures import make_run_dir, story_lines, tiny_export_config, tiny_tokenizer

SEQ_LEN = 32


def eval_config(**overrides: object) -> ModelConfig:
    return tiny_export_config(max_seq_len=SEQ_LEN, **overrides)


def uniform_model(cfg: ModelConfig) -> DecoderLM:
    """Every weight zero: the hidden states and so the logits are 0, a uniform distribution over the vocab."""
    model = DecoderLM(cfg)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    return model.eval()


def trained_run_dir(root: Path, train_steps: int = 10) -> Path:
    return make_run_dir(root, eval_config(), train_steps=train_steps)


def two_step_run_dir(root: Path) -> Path:
    """A run dir with a random checkpoint at step 0 and a uniform (all-zero) one at step 5."""
    cfg = eval_config()
    write_model_run_dir(root, cfg, build_model(cfg, seed=0).state_dict(), tiny_tokenizer(), step=0)
    return write_model_run_dir(root, cfg, uniform_model(cfg).state_dict(), tiny_tokenizer(), step=5)


def stories_file(path: Path, num_stories: int = 60) -> Path:
    lines = story_lines()
    stories = ["\n".join(lines[i:i + 4]) for i in range(0, 4 * num_stories, 4)]
    path.write_text("\n<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n", encoding="utf-8")
    return path


def prepared_data(root: Path, tokenizer_file: Path) -> Path:
    """Token shards of a few stories, tokenized with `tokenizer_file`, with a val split."""
    prepare_corpus(root / "data", stories_file(root / "stories.txt"), tokenizer_path=str(tokenizer_file),
                   seq_len=SEQ_LEN, val_fraction=0.2)
    return root / "data"


def eval_dirs(root: Path) -> tuple[Path, Path]:
    """A trained run dir whose config.json records prepared data (as a trainer's run_setup writes it)."""
    run_dir = trained_run_dir(root / "run")
    data_dir = prepared_data(root, run_dir / "tokenizer.json")
    config = json.loads((run_dir / "config.json").read_text())
    config["data"] = {"data_dir": str(data_dir)}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir, data_dir
