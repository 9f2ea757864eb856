"""What an export reads from a run dir: the model config, a verified checkpoint's weights, its tokenizer."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from perkunas_ray.checkpoint.format import (
    CHECKPOINTS,
    MANIFEST,
    checkpoint_dir_name,
    latest_checkpoint,
    list_checkpoints,
    load_model_state,
    load_run_config,
    read_state,
    verify_checkpoint,
)
from perkunas_ray.config import ModelConfig
from perkunas_ray.errors import CheckpointError
from perkunas_ray.export.errors import ExportError
from perkunas_ray.export.tokenizer_files import ExportTokenizer, load_export_tokenizer


@dataclasses.dataclass
class ExportSource:
    """A run's model, read from one complete, checksum-verified checkpoint."""

    run_dir: Path
    checkpoint_dir: Path
    step: int
    tokens_seen: int
    config: ModelConfig
    state: dict[str, torch.Tensor]  # HF Llama/Qwen3 names; no lm_head.weight when tied
    tokenizer: ExportTokenizer


def select_checkpoint(run_dir: Path, step: int | None) -> Path:
    """The newest checkpoint that verifies, or the one of `step` (verified); an error names what is wrong.

    Every file is checked against its sha256; the error names the first bad one.
    """
    if not run_dir.is_dir():
        raise CheckpointError(f"run dir {run_dir} does not exist")
    if step is None:
        return latest_checkpoint(run_dir)
    ckpt = run_dir / CHECKPOINTS / checkpoint_dir_name(step)
    if not ckpt.is_dir():
        steps = [s for s, _ in list_checkpoints(run_dir)]
        raise CheckpointError(f"run dir {run_dir} has no checkpoint for step {step} (complete checkpoints: "
                              f"{', '.join(map(str, steps)) or 'none'})")
    if not (ckpt / MANIFEST).is_file():
        raise CheckpointError(f"checkpoint {ckpt} is incomplete: it has no {MANIFEST}")
    verify_checkpoint(ckpt)
    return ckpt


def check_dtype(dtype: str, choices: dict[str, Any]) -> None:
    if dtype not in choices:
        raise ExportError(f"--dtype must be one of {', '.join(choices)}, got {dtype!r}")


def check_exportable(cfg: ModelConfig, target: str) -> None:
    """Refuse a model feature that no target architecture expresses, naming it."""
    if cfg.attn_softcap > 0:
        raise ExportError(f"model.attn_softcap={cfg.attn_softcap} (attention logit soft-capping) cannot be "
                          f"exported to {target}: neither the Llama nor the Qwen3 architecture has it")


def load_export_source(run_dir: str | Path, step: int | None = None, tokenizer_dir: str | Path | None = None,
                       target: str = "Hugging Face") -> ExportSource:
    """Read and verify everything an export needs before anything is written."""
    run_dir = Path(run_dir)
    ckpt = select_checkpoint(run_dir, step)
    cfg = load_run_config(run_dir).model
    check_exportable(cfg, target)
    state = load_model_state(ckpt, verify=False)  # select_checkpoint verified it
    run_state = read_state(ckpt)
    tokenizer = load_export_tokenizer(run_dir if tokenizer_dir is None else Path(tokenizer_dir), cfg.vocab_size)
    return ExportSource(run_dir=run_dir, checkpoint_dir=ckpt, step=int(run_state.get("step", -1)),
                        tokens_seen=int(run_state.get("tokens_seen", 0)), config=cfg, state=state,
                        tokenizer=tokenizer)
