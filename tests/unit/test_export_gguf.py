"""GGUF export read back with gguf.GGUFReader (no llama.cpp): names, shapes, un-permuted q/k, tokenizer metadata."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from perkunas_ray.checkpoint.format import latest_checkpoint, load_model_state
from perkunas_ray.cli import main
from perkunas_ray.export import export_gguf, export_ollama
from perkunas_ray.export.gguf_export import gguf_tensor_name, permute_qk
from perkunas_ray.export.manifest import read_export_manifest
from tests.unit.test_export_fixtures import make_run_dir, tiny_export_config, tiny_tokenizer

pytestmark = pytest.mark.unit

CASES = {
    "llama-tied-gqa1": dict(n_kv_heads=1, tie_embeddings=True),
    "llama-untied-gqa2": dict(n_kv_heads=2, tie_embeddings=False),
    "qwen3-qknorm": dict(n_kv_heads=2, qk_norm=True, tie_embeddings=False),
}



def unpermute_qk(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of permute_qk (how llama.cpp's GGUF-to-HF conversion reads the q/k rows back)."""
    out = weight.shape[0]
    return weight.reshape(n_head, out // n_head // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)

def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    cfg = tiny_export_config(**CASES[request.param])
    run_dir = make_run_dir(root / "run", cfg, train_steps=3)
    out = export_gguf(run_dir, root / "model.gguf")
    state = load_model_state(latest_checkpoint(run_dir))
    return cfg, state, gguf.GGUFReader(str(out))


def test_permutation_is_a_per_head_row_shuffle_and_its_inverse_undoes_it():
    w = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(16, 3)  # 2 heads of dim 8, 3 inputs
    p = permute_qk(w, 2)
    # within each head, rows go from [0..3 | 4..7] (two halves) to interleaved pairs 0,4,1,5,2,6,3,7
    assert p[:8, 0].tolist() == [w[i, 0].item() for i in (0, 4, 1, 5, 2, 6, 3, 7)]
    assert torch.equal(unpermute_qk(p, 2), w)


def test_hyperparameters_match_the_model(exported):
    cfg, _, reader = exported
    arch = "qwen3" if cfg.qk_norm else "llama"
    assert _field(reader, "general.architecture") == arch
    assert _field(reader, f"{arch}.context_length") == cfg.max_seq_len
    assert _field(reader, f"{arch}.embedding_length") == cfg.d_model
    assert _field(reader, f"{arch}.block_count") == cfg.n_layers
    assert _field(reader, f"{arch}.feed_forward_length") == cfg.d_ff
    assert _field(reader, f"{arch}.attention.head_count") == cfg.n_heads
    assert _field(reader, f"{arch}.attention.head_count_kv") == cfg.n_kv_heads
    assert _field(reader, f"{arch}.rope.freq_base") == pytest.approx(cfg.rope_theta)
    assert _field(reader, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.norm_eps)
    assert _field(reader, "perkunas.step") == 3


def test_tensor_names_shapes_and_values(exported):
    cfg, state, reader = exported
    tensors = {t.name: t for t in reader.tensors}
    expected = {gguf_tensor_name(n) for n in state}
    assert set(tensors) == expected
    assert ("output.weight" in tensors) is not cfg.tie_embeddings  # tied: llama.cpp reuses token_embd
    assert ("blk.0.attn_q_norm.weight" in tensors) is cfg.qk_norm
    for name, ours in state.items():
        t = tensors[gguf_tensor_name(name)]
        got = torch.from_numpy(np.array(t.data)).reshape(ours.shape)  # numpy order is ours: (out, in)
        assert tuple(int(d) for d in reversed(t.shape)) == tuple(ours.shape)
        # arch llama: q/k rows permuted to GGML's RoPE pairing; qwen3 uses NeoX RoPE there, nothing permuted
        if not cfg.qk_norm and name.endswith(("q_proj.weight", "k_proj.weight")):
            got = unpermute_qk(got, cfg.n_heads if "q_proj" in name else cfg.n_kv_heads)
        assert torch.equal(got, ours), name


def test_tokenizer_metadata(exported):
    cfg, _, reader = exported
    tok = tiny_tokenizer()
    data = json.loads(tok.to_str())
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == cfg.vocab_size
    assert tokens == [tok.id_to_token(i) or f"[PAD{i}]" for i in range(cfg.vocab_size)]
    types = _field(reader, "tokenizer.ggml.token_type")
    specials = {t["id"] for t in data["added_tokens"] if t["special"]}
    assert specials == set(range(6))
    assert [i for i, ty in enumerate(types) if ty == gguf.TokenType.CONTROL] == sorted(specials)
    assert all(ty in (gguf.TokenType.NORMAL, gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED) for ty in types)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    assert _field(reader, "tokenizer.ggml.merges") == merges
    assert _field(reader, "tokenizer.ggml.bos_token_id") == 0
    assert _field(reader, "tokenizer.ggml.eos_token_id") == 0
    assert _field(reader, "tokenizer.ggml.padding_token_id") == 1
    assert _field(reader, "tokenizer.ggml.eot_token_id") == tok.token_to_id("<|end|>")
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False
    assert "<|assistant|>" in _field(reader, "tokenizer.chat_template")


def test_f16_export_halves_matrices_and_keeps_norms_f32(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", tiny_export_config(), train_steps=0)
    out = tmp_path / "m16.gguf"
    assert main(["export", "gguf", "--run-dir", str(run_dir), "--output", str(out), "--dtype", "f16"]) == 0
    kinds = {t.name: t.tensor_type for t in gguf.GGUFReader(str(out)).tensors}
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert kinds["token_embd.weight"] == gguf.GGMLQuantizationType.F16
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_ollama_dir_has_gguf_modelfile_and_manifest(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", tiny_export_config(), train_steps=0)
    out = tmp_path / "ollama"
    assert main(["export", "ollama", "--run-dir", str(run_dir), "--output-dir", str(out)]) == 0
    text = (out / "Modelfile").read_text()
    assert text.splitlines()[0] == "FROM ./model.gguf"
    for line in ("PARAMETER temperature 0.8", "PARAMETER top_p 0.95", 'PARAMETER stop "<|endoftext|>"',
                 'TEMPLATE "{{ .Prompt }}"', 'SYSTEM "You are a tiny story generator. Continue the story."'):
        assert line in text.splitlines()
    assert _field(gguf.GGUFReader(str(out / "model.gguf")), "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert set(read_export_manifest(out)["files"]) == {"model.gguf", "Modelfile"}
    chat = export_ollama(run_dir, tmp_path / "chat", chat=True, system="Be brief.")
    text = (chat / "Modelfile").read_text()
    assert 'PARAMETER stop "<|end|>"' in text and "<|assistant|>{{ .Response }}" in text
    assert 'SYSTEM "Be brief."' in text
