"""Export to a Hugging Face package, load it with transformers (local files only) and compare with our model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from perkunas_ray.chat_template import CHAT_TEMPLATE, render_chat
from perkunas_ray.checkpoint.format import sha256_file
from perkunas_ray.cli import main
from perkunas_ray.export import export_hf, load_hf_package
from perkunas_ray.export.manifest import EXPORT_MANIFEST, read_export_manifest
from perkunas_ray.model.decoder import DecoderLM
from perkunas_ray.model_source import load_inference_model
from tests.model_helpers import generate_greedy
from tests.unit.test_export_fixtures import (
    PROMPTS,
    load_our_model,
    make_run_dir,
    tiny_export_config,
    tiny_tokenizer,
)

pytestmark = pytest.mark.integration
os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

CASES = {
    "llama-gqa1-tied": dict(n_kv_heads=1, tie_embeddings=True),
    "llama-gqa2-untied": dict(n_kv_heads=2, tie_embeddings=False),
    "qwen3-qknorm-gqa2-tied": dict(n_kv_heads=2, qk_norm=True, tie_embeddings=True),
    "qwen3-qknorm-gqa1-untied": dict(n_kv_heads=1, qk_norm=True, tie_embeddings=False),
}
LOGITS_ATOL = 1e-4
CHAT = [{"role": "system", "content": "Tell stories."}, {"role": "user", "content": "A story about a cat?"}]


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory) -> tuple[str, Path, Path]:
    root = tmp_path_factory.mktemp(request.param)
    run_dir = make_run_dir(root / "run", tiny_export_config(**CASES[request.param]), train_steps=30)
    out = export_hf(run_dir, root / "hf")
    return request.param, run_dir, out


def _load_hf(path: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    return model.eval()


def test_config_names_the_architecture_and_both_rope_keys(exported):
    case, _, out = exported
    cfg = json.loads((out / "config.json").read_text())
    qwen = "qwen3" in case
    assert cfg["architectures"] == ["Qwen3ForCausalLM" if qwen else "LlamaForCausalLM"]
    assert cfg["model_type"] == ("qwen3" if qwen else "llama")
    assert cfg["num_key_value_heads"] == CASES[case]["n_kv_heads"]
    assert cfg["tie_word_embeddings"] is CASES[case]["tie_embeddings"]
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    assert cfg["head_dim"] == cfg["hidden_size"] // cfg["num_attention_heads"]
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (0, 0, 1)
    assert cfg["hidden_act"] == "silu" and cfg["attention_bias"] is False
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert ("lm_head.weight" in set(f.keys())) is not CASES[case]["tie_embeddings"]
    gen = json.loads((out / "generation_config.json").read_text())
    tok = tiny_tokenizer()
    assert gen["eos_token_id"] == [0, tok.token_to_id("<|end|>")]


def test_transformers_logits_match_ours(exported):
    _, run_dir, out = exported
    ours, theirs = load_our_model(run_dir), _load_hf(out)
    tok = tiny_tokenizer()
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt).ids])
        with torch.no_grad():
            diff = (ours.logits(ids) - theirs(ids).logits).abs().max().item()
        assert diff <= LOGITS_ATOL, f"{prompt!r}: max |logit diff| {diff}"


def test_transformers_greedy_generation_matches_ours(exported):
    _, run_dir, out = exported
    ours, theirs = load_our_model(run_dir), _load_hf(out)
    theirs.generation_config.eos_token_id = None  # 20 tokens on both sides, EOS or not
    tok = tiny_tokenizer()
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt).ids])
        expected = generate_greedy(ours, ids, 20)
        got = theirs.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=1)[0, ids.shape[1]:].tolist()
        assert got == expected, prompt


def test_auto_tokenizer_encodes_decodes_and_renders_chat_like_ours(exported):
    _, _, out = exported
    theirs = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    ours = tiny_tokenizer()
    assert (theirs.eos_token, theirs.pad_token) == ("<|endoftext|>", "<|pad|>")
    assert (theirs.eos_token_id, theirs.pad_token_id) == (0, 1)
    texts = [*PROMPTS, "<|user|>Hi there<|end|><|assistant|>", "  spaces\tand\nnewlines  ", "émoji 🦙 ünïcode"]
    for text in texts:
        ids = ours.encode(text).ids
        assert theirs(text)["input_ids"] == ids, text
        assert theirs.decode(ids) == ours.decode(ids, skip_special_tokens=False), text
        assert theirs.decode(ids, skip_special_tokens=True) == ours.decode(ids), text
    rendered = theirs.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert rendered == render_chat(CHAT) == "<|system|>Tell stories.<|end|><|user|>A story about a cat?<|end|><|assistant|>"


def test_import_round_trip_gives_identical_logits(exported):
    _, run_dir, out = exported
    cfg, state = load_hf_package(out)
    ours = load_our_model(run_dir)
    assert cfg.qk_norm == ours.config.qk_norm and cfg.tie_embeddings == ours.config.tie_embeddings
    assert (cfg.n_kv_heads, cfg.d_model, cfg.vocab_size) == (ours.config.n_kv_heads, ours.config.d_model,
                                                            ours.config.vocab_size)
    imported = DecoderLM(cfg)
    imported.load_state_dict(state, strict=True)
    imported.eval()
    loaded = load_inference_model(out)  # the serving loader goes through load_hf_package too
    tok = tiny_tokenizer()
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt).ids])
        with torch.no_grad():
            assert torch.equal(imported.logits(ids), ours.logits(ids))
            assert torch.equal(loaded.model.logits(ids), ours.logits(ids))
    assert loaded.eos_token_id == 0 and loaded.chat_template == CHAT_TEMPLATE


def test_manifest_lists_every_file_with_its_sha256(exported):
    _, run_dir, out = exported
    manifest = read_export_manifest(out)
    written = {p.name for p in out.iterdir()} - {EXPORT_MANIFEST}
    assert set(manifest["files"]) == written
    for name, meta in manifest["files"].items():
        assert meta["sha256"] == sha256_file(out / name)
    assert manifest["source"]["step"] == 30 and manifest["source"]["tokens_seen"] > 0
    assert manifest["source"]["checkpoint"] == "step_00000030"
    assert manifest["perkunas_version"]
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("dtype,torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_export_loads_in_that_dtype(exported, tmp_path, dtype, torch_dtype):
    _, run_dir, _ = exported
    out = tmp_path / f"hf-{dtype}"
    assert main(["export", "hf", "--run-dir", str(run_dir), "--output-dir", str(out), "--dtype", dtype]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["torch_dtype"] == cfg["dtype"] == str(torch_dtype).removeprefix("torch.")
    model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert model.dtype == torch_dtype
    ours = load_our_model(run_dir)
    ids = torch.tensor([tiny_tokenizer().encode(PROMPTS[0]).ids])
    with torch.no_grad():
        diff = (model.float()(ids).logits - ours.logits(ids)).abs().max().item()
    assert diff < 0.1  # only weight rounding separates them
