"""load_hf_package: Llama/Qwen3 configs and (sharded) safetensors in, our config and names out; clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from perkunas_ray.errors import CheckpointError
from perkunas_ray.export import load_hf_package
from perkunas_ray.export.hf import hf_config, hf_state_dict
from perkunas_ray.export.tokenizer_files import load_export_tokenizer
from perkunas_ray.model import DecoderLM, build_model
from tests.unit.test_export_fixtures import tiny_export_config, tiny_tokenizer

pytestmark = pytest.mark.unit


def _package(root: Path, cfg_overrides: dict | None = None, hf_overrides: dict | None = None,
             shards: int = 1) -> tuple[Path, DecoderLM]:
    cfg = tiny_export_config(**(cfg_overrides or {}))
    model = build_model(cfg, seed=3).eval()
    root.mkdir(parents=True, exist_ok=True)
    tok_file = root / "tokenizer.json"
    tiny_tokenizer().save(str(tok_file))
    config = hf_config(cfg, load_export_tokenizer(tok_file, cfg.vocab_size))
    config.update(hf_overrides or {})
    (root / "config.json").write_text(json.dumps(config))
    state = hf_state_dict(cfg, model.state_dict(), "fp32")
    if shards == 1:
        save_file(state, str(root / "model.safetensors"), metadata={"format": "pt"})
    else:
        names = sorted(state)
        weight_map = {}
        for i in range(shards):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: state[n] for n in names[i::shards]}
            save_file(part, str(root / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, file))
        (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root, model


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": False, "n_kv_heads": 1}, {"qk_norm": True}])
@pytest.mark.parametrize("shards", [1, 3])
def test_round_trip_gives_identical_logits(tmp_path, overrides, shards):
    path, model = _package(tmp_path / "pkg", overrides, shards=shards)
    cfg, state = load_hf_package(path)
    for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len", "qk_norm",
                "tie_embeddings", "rope_theta", "norm_eps"):
        assert getattr(cfg, key) == getattr(model.config, key), key
    imported = DecoderLM(cfg)
    imported.load_state_dict(state, strict=True)
    ids = torch.tensor([[5, 77, 300, 12, 9]])
    with torch.no_grad():
        assert torch.equal(imported.eval().logits(ids), model.logits(ids))


def test_v4_style_config_without_rope_parameters(tmp_path):
    path, model = _package(tmp_path / "pkg", hf_overrides={"rope_parameters": None, "rope_theta": 500000.0,
                                                           "head_dim": None})
    cfg, _ = load_hf_package(path)
    assert cfg.rope_theta == 500000.0


def test_tied_package_carrying_a_duplicate_head_loads(tmp_path):
    path, model = _package(tmp_path / "pkg")
    state = hf_state_dict(model.config, model.state_dict(), "fp32")
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    _, loaded = load_hf_package(path)
    assert "lm_head.weight" not in loaded


@pytest.mark.parametrize("hf_overrides,message", [
    ({"model_type": "gpt2"}, r"model_type 'gpt2' is not supported \(supported: llama, qwen3\)"),
    ({"model_type": "mistral"}, r"model_type 'mistral' is not supported"),
    ({"head_dim": 32}, r"head_dim=32 differs from hidden_size/num_attention_heads=64/4"),
    ({"attention_bias": True}, r"attention_bias=true is not supported"),
    ({"mlp_bias": True}, r"mlp_bias=true is not supported"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, r"rope_scaling has rope_type 'llama3'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, r"rope_parameters has rope_type 'yarn'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, r"rope_scaling has rope_type 'linear'"),
    ({"hidden_act": "gelu"}, r"hidden_act 'gelu' is not supported"),
    ({"hidden_size": None}, r"hidden_size"),
])
def test_unsupported_configs_are_refused_by_name(tmp_path, hf_overrides, message):
    path, _ = _package(tmp_path / "pkg", hf_overrides={k: v for k, v in hf_overrides.items() if v is not None})
    if hf_overrides.get("hidden_size", 0) is None:
        config = json.loads((path / "config.json").read_text())
        del config["hidden_size"]
        (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_hf_package(path)


def test_pickled_weights_are_refused_not_loaded(tmp_path):
    path, _ = _package(tmp_path / "pkg")
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"not even a pickle")  # never opened
    with pytest.raises(CheckpointError, match=r"found pytorch_model.bin: pickled weights are never loaded"):
        load_hf_package(path)


def test_missing_and_mismatched_tensors(tmp_path):
    path, model = _package(tmp_path / "pkg", {"tie_embeddings": False})
    state = hf_state_dict(model.config, model.state_dict(), "fp32")
    del state["lm_head.weight"]
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing \['lm_head.weight'\]"):
        load_hf_package(path)
    config = json.loads((path / "config.json").read_text())
    config.update(tie_word_embeddings=True, intermediate_size=96)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"layers.0.mlp.gate_proj.weight has shape \(128, 64\), config.json implies \(96, 64\)"):
        load_hf_package(path)


def test_not_a_package(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_hf_package(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64,
                                                      "num_attention_heads": 4, "num_hidden_layers": 1,
                                                      "intermediate_size": 8, "vocab_size": 10}))
    with pytest.raises(CheckpointError, match="has neither model.safetensors nor model.safetensors.index.json"):
        load_hf_package(tmp_path)
