"""Export a run to one GGUF file for llama.cpp / Ollama: arch `llama`, or `qwen3` when the model has QK-norm.

Mirrors llama.cpp's convert_hf_to_gguf.py. For arch `llama`, q/k projection rows are permuted
(LlamaModel.permute): HF rotates the two halves of each head (NeoX style), GGML's llama RoPE rotates
adjacent pairs. Arch `qwen3` uses NeoX RoPE in llama.cpp, so its weights are written unpermuted.
Tied embeddings write only token_embd; llama.cpp reuses it as the output matrix.
"""

from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import torch

from perkunas_ray import __version__
from perkunas_ray.chat_template import CHAT_TEMPLATE
from perkunas_ray.config import ModelConfig
from perkunas_ray.export.gguf_vocab import add_vocab
from perkunas_ray.export.source import ExportSource, check_dtype, check_exportable, load_export_source
from perkunas_ray.export.staging import check_output, staged_file

GGUF_DTYPES = {"f32": (np.float32, gguf.LlamaFileType.ALL_F32),
               "f16": (np.float16, gguf.LlamaFileType.MOSTLY_F16)}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def gguf_arch(cfg: ModelConfig) -> str:
    check_exportable(cfg, "GGUF")
    return "qwen3" if cfg.qk_norm else "llama"


def gguf_tensor_name(name: str) -> str:
    """Our (HF) parameter name -> llama.cpp's tensor name."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _LAYER.match(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    raise ValueError(f"no GGUF name for parameter {name}")


def permute_qk(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of each head from half-split order (HF) to interleaved pairs (GGML llama): (n_head*hd, in)."""
    out = weight.shape[0]
    return weight.reshape(n_head, 2, out // n_head // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def gguf_tensors(cfg: ModelConfig, state: dict[str, torch.Tensor], dtype: str) -> dict[str, np.ndarray]:
    """GGUF name -> array; norms stay f32 as llama.cpp's converter keeps 1-D tensors."""
    arch = gguf_arch(cfg)
    np_dtype = GGUF_DTYPES[dtype][0]
    out: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        t = tensor.detach().to("cpu", torch.float32)
        if arch == "llama" and name.endswith("self_attn.q_proj.weight"):
            t = permute_qk(t, cfg.n_heads)
        elif arch == "llama" and name.endswith("self_attn.k_proj.weight"):
            t = permute_qk(t, cfg.n_kv_heads)
        array = t.contiguous().numpy()
        out[gguf_tensor_name(name)] = array if array.ndim == 1 else array.astype(np_dtype)
    return out


def write_gguf(source: ExportSource, path: Path, dtype: str = "f32") -> None:
    """Write `source` as a GGUF file at `path` (overwritten)."""
    cfg, tok = source.config, source.tokenizer
    writer = gguf.GGUFWriter(path=str(path), arch=gguf_arch(cfg))
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(source.run_dir.resolve().name)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(GGUF_DTYPES[dtype][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string("perkunas.version", __version__)
    writer.add_string("perkunas.checkpoint", source.checkpoint_dir.name)
    writer.add_uint64("perkunas.step", max(source.step, 0))
    writer.add_uint64("perkunas.tokens_seen", source.tokens_seen)
    add_vocab(writer, tok, cfg.vocab_size, CHAT_TEMPLATE)
    for name, array in gguf_tensors(cfg, source.state, dtype).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_gguf(run_dir: str | Path, output: str | Path, dtype: str = "f32", overwrite: bool = False,
                step: int | None = None, tokenizer_dir: str | Path | None = None) -> Path:
    """Write RUN's newest (or `step`'s) checkpoint as one .gguf file at `output`."""
    output = Path(output)
    check_dtype(dtype, GGUF_DTYPES)
    check_output(output, overwrite, "--output", is_dir=False, sources=(run_dir, tokenizer_dir))
    source = load_export_source(run_dir, step, tokenizer_dir, target="GGUF")
    with staged_file(output, overwrite) as tmp:
        write_gguf(source, tmp, dtype)
    return output
