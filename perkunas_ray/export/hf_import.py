"""Load a Hugging Face Llama- or Qwen3-family package from disk into our ModelConfig and parameter names.

Reads config.json and safetensors only (model.safetensors or a sharded model.safetensors.index.json);
pickled .bin weights are refused, never loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from perkunas_ray.config import ModelConfig
from perkunas_ray.errors import CheckpointError, ConfigError
from perkunas_ray.model.decoder import parameter_shapes

SUPPORTED_MODEL_TYPES = ("llama", "qwen3")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # old transformers saved this buffer; it is recomputed


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _rope_theta(hf: dict[str, Any], where: Path) -> float:
    """rope_theta from v5 `rope_parameters` or the v4 keys; any scaling other than none/default is refused."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for name, block in (("rope_parameters", params), ("rope_scaling", scaling)):
        if not isinstance(block, dict):
            raise CheckpointError(f"{where}: {name} must be an object, got {block!r}")
        rope_type = block.get("rope_type", block.get("type", "default"))
        if rope_type not in (None, "default"):
            raise CheckpointError(f"{where}: {name} has rope_type {rope_type!r}; only unscaled RoPE "
                                  f"(none or 'default') is supported")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    return float(theta)


def config_from_hf(hf: dict[str, Any], where: Path) -> ModelConfig:
    """Our ModelConfig from an HF config.json dict; refuses what our decoder cannot run exactly."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"{where}: model_type {model_type!r} is not supported (supported: "
                              f"{', '.join(SUPPORTED_MODEL_TYPES)})")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise CheckpointError(f"{where}: {key}=true is not supported (our decoder has no biases)")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{where}: hidden_act {act!r} is not supported (only silu / SwiGLU)")
    if model_type == "qwen3" and hf.get("use_sliding_window"):
        raise CheckpointError(f"{where}: use_sliding_window=true is not supported (full causal attention only)")
    try:
        d_model, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        values = dict(vocab_size=int(hf["vocab_size"]), d_model=d_model, n_layers=int(hf["num_hidden_layers"]),
                      n_heads=n_heads, n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
                      d_ff=int(hf["intermediate_size"]))
    except KeyError as exc:
        raise CheckpointError(f"{where}: config.json lacks {exc.args[0]!r}") from exc
    head_dim = hf.get("head_dim")
    if head_dim is not None and (n_heads * int(head_dim) != d_model):
        raise CheckpointError(f"{where}: head_dim={head_dim} differs from hidden_size/num_attention_heads="
                              f"{d_model}/{n_heads}; our decoder needs head_dim == hidden_size / heads")
    cfg = ModelConfig(**values, max_seq_len=int(hf.get("max_position_embeddings", 2048)),
                      rope_theta=_rope_theta(hf, where), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                      qk_norm=model_type == "qwen3", attn_softcap=0.0,
                      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                      init_std=float(hf.get("initializer_range", 0.02)))
    try:
        return cfg.validate(prefix=f"{where}")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


def _weight_file(index: Path, entry: object) -> str:
    """A weight_map value must name a file beside the index; `/etc/...` or `../` would read outside the package."""
    if not isinstance(entry, str) or not entry or Path(entry).name != entry or entry in (".", "..") or "\\" in entry:
        raise CheckpointError(f"{index}: weight_map entry {entry!r} is not a plain file name inside the package")
    return entry


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    index, single = path / INDEX_FILE, path / SINGLE_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        files = sorted({_weight_file(index, entry) for entry in weight_map.values()})
    elif single.is_file():
        files = [SINGLE_FILE]
    else:
        pickles = sorted(p.name for p in path.glob("*.bin"))
        hint = f" (found {', '.join(pickles)}: pickled weights are never loaded; convert them to safetensors)" \
            if pickles else ""
        raise CheckpointError(f"{path} has neither {SINGLE_FILE} nor {INDEX_FILE}{hint}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}, listed in {INDEX_FILE}, is missing")
        try:
            state.update(load_file(str(file)))
        except Exception as exc:  # safetensors has its own error types for truncated or garbled files
            raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from exc
    return state


def load_hf_package(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(ModelConfig, state dict in our names) of a Llama/Qwen3 HF package dir; tensors keep their stored dtype."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json; is it a Hugging Face package dir?")
    cfg = config_from_hf(_read_json(config_file), config_file)
    state = {k: v for k, v in _load_weights(path).items() if not k.endswith(IGNORED_SUFFIXES)}
    # Tied: the head is the embedding; a package may still carry a (duplicate) lm_head.weight.
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    expected = parameter_shapes(cfg)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match config.json (missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]})")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise CheckpointError(f"{path}: {name} has shape {tuple(state[name].shape)}, config.json implies "
                                  f"{shape}")
    return cfg, state
