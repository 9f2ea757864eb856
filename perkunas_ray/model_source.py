"""Load a model for inference (engine, eval, chat) from a training run dir or a Hugging Face package dir.

It sits above checkpoint/ (run dirs) and export/ (Hugging Face packages) because it reads both.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tokenizers import Tokenizer

from perkunas_ray.chat_template import CHAT_TEMPLATE
from perkunas_ray.checkpoint.format import (
    CHECKPOINTS,
    checkpoint_dir_name,
    latest_checkpoint,
    load_model_state,
    load_run_config,
    read_state,
)
from perkunas_ray.data.tokenizer import EOS_TOKEN
from perkunas_ray.device import TORCH_DTYPES
from perkunas_ray.errors import CheckpointError
from perkunas_ray.export.hf_import import load_hf_package
from perkunas_ray.model.decoder import DecoderLM


@dataclasses.dataclass
class LoadedModel:
    model: DecoderLM
    tokenizer: Tokenizer
    eos_token_id: int
    chat_template: str
    name: str
    source: str
    step: int | None = None


def is_hf_package(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and "model_type" in json.loads(config.read_text())


def load_inference_model(path: str | Path, device: str = "cpu", dtype: str = "fp32",
                         step: int | None = None) -> LoadedModel:
    """The model in eval mode on `device` in `dtype`, its tokenizer, EOS id and chat template.

    `step` picks one checkpoint of a run dir (its shards are checked against its manifest); None: the newest
    that verifies.
    """
    path = Path(path)
    if dtype not in TORCH_DTYPES:
        raise CheckpointError(f"dtype must be one of {', '.join(TORCH_DTYPES)}, got {dtype!r}")
    if not path.is_dir():
        raise CheckpointError(f"model source {path} does not exist (expected a run dir or a Hugging Face package dir)")
    if is_hf_package(path):
        if step is not None:
            raise CheckpointError(f"{path} is a Hugging Face package; a checkpoint step applies to run dirs only")
        cfg, state = load_hf_package(path)
        chat_template = hf_chat_template(path)
        step = None
    else:
        cfg = load_run_config(path).model
        ckpt = latest_checkpoint(path) if step is None else path / CHECKPOINTS / checkpoint_dir_name(step)
        state = load_model_state(ckpt, verify=step is not None)  # latest_checkpoint has checked the sums already
        step = int(read_state(ckpt)["step"])
        chat_template = CHAT_TEMPLATE
    tokenizer_path = path / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise CheckpointError(f"{path} has no tokenizer.json")
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    model = DecoderLM(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" or not cfg.tie_embeddings]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the model config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    model = model.to(device=device, dtype=TORCH_DTYPES[dtype]).eval()
    eos = tokenizer.token_to_id(EOS_TOKEN)
    return LoadedModel(model=model, tokenizer=tokenizer, eos_token_id=0 if eos is None else eos,
                       chat_template=chat_template, name=path.name, source=str(path), step=step)


def hf_chat_template(path: Path) -> str:
    """The chat template a Hugging Face package declares in tokenizer_config.json, else the product's own."""
    config = path / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    return CHAT_TEMPLATE
