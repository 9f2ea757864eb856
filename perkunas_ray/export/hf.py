"""Export a run to a Hugging Face package (Llama, or Qwen3 with QK-norm) that transformers and vLLM load as is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from perkunas_ray.config import ModelConfig
from perkunas_ray.export.manifest import write_export_manifest
from perkunas_ray.export.source import check_dtype, check_exportable, load_export_source
from perkunas_ray.export.staging import check_output, staged_dir
from perkunas_ray.export.tokenizer_files import ExportTokenizer, write_hf_tokenizer_files, write_json

HF_DTYPES = {"fp32": (torch.float32, "float32"), "fp16": (torch.float16, "float16"),
             "bf16": (torch.bfloat16, "bfloat16")}
WEIGHTS_FILE = "model.safetensors"
LM_HEAD = "lm_head.weight"


def hf_architecture(cfg: ModelConfig) -> tuple[str, str]:
    """(architectures[0], model_type): Qwen3 is Llama plus per-head RMSNorm on q and k."""
    check_exportable(cfg, "Hugging Face")
    return ("Qwen3ForCausalLM", "qwen3") if cfg.qk_norm else ("LlamaForCausalLM", "llama")


def hf_config(cfg: ModelConfig, tok: ExportTokenizer, dtype: str = "fp32") -> dict[str, Any]:
    """config.json, with both the transformers-v4 `rope_theta` and the v5 `rope_parameters` keys."""
    arch, model_type = hf_architecture(cfg)
    dtype_name = HF_DTYPES[dtype][1]
    config: dict[str, Any] = {
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "use_cache": True,
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }
    if model_type == "llama":
        config.update({"mlp_bias": False, "pretraining_tp": 1})
    else:
        config.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": cfg.n_layers,
                       "layer_types": ["full_attention"] * cfg.n_layers})
    return config


def generation_config(tok: ExportTokenizer) -> dict[str, Any]:
    """Generation stops at EOS and at the end-of-turn token of the chat format."""
    stop = tok.stop_token_ids
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": stop if len(stop) > 1 else stop[0],
            "pad_token_id": tok.pad_token_id}


def hf_state_dict(cfg: ModelConfig, state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Our names are HF's already: cast, make contiguous copies, drop the head when it is tied."""
    torch_dtype = HF_DTYPES[dtype][0]
    return {name: t.detach().to("cpu", torch_dtype).contiguous().clone() for name, t in sorted(state.items())
            if not (cfg.tie_embeddings and name == LM_HEAD)}


def export_hf(run_dir: str | Path, output_dir: str | Path, tokenizer_dir: str | Path | None = None,
              dtype: str = "fp32", overwrite: bool = False, step: int | None = None) -> Path:
    """Write RUN's newest (or `step`'s) checkpoint as a Hugging Face package at `output_dir`."""
    output_dir = Path(output_dir)
    check_dtype(dtype, HF_DTYPES)
    check_output(output_dir, overwrite, "--output-dir", is_dir=True, sources=(run_dir, tokenizer_dir))
    source = load_export_source(run_dir, step, tokenizer_dir, target="Hugging Face")
    cfg, tok = source.config, source.tokenizer
    config = hf_config(cfg, tok, dtype)
    with staged_dir(output_dir, overwrite) as tmp:
        write_json(tmp / "config.json", config)
        write_json(tmp / "generation_config.json", generation_config(tok))
        write_hf_tokenizer_files(tok, tmp, cfg.max_seq_len)
        save_file(hf_state_dict(cfg, source.state, dtype), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_export_manifest(tmp, source, kind="huggingface", architecture=config["architectures"][0],
                              dtype=dtype)
    return output_dir
