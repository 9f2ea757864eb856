"""Load exported GGUF files in llama.cpp (llama-cpp-python) and compare tokens, logits and greedy output with ours.

Measured on the tiny test models (f32 GGUF): max |logit diff| ~2e-6 with an f32 KV cache, ~1e-3 with llama.cpp's
default f16 KV cache; f16 GGUF weights ~3e-3. Tolerances below leave a wide margin over those.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from perkunas_ray.chat_template import CHAT_TEMPLATE
from perkunas_ray.export import export_gguf, export_ollama
from tests.model_helpers import generate_greedy
from tests.unit.test_export_fixtures import (
    PROMPTS,
    load_our_model,
    make_run_dir,
    tiny_export_config,
    tiny_tokenizer,
)

pytestmark = [pytest.mark.integration, pytest.mark.llamacpp]
try:  # an install whose native library is missing raises FileNotFoundError, not ImportError
    import llama_cpp
except (ImportError, OSError) as exc:
    pytest.skip(f"llama-cpp-python is not usable here: {exc}", allow_module_level=True)

CASES = {
    "llama-gqa1-tied": dict(n_kv_heads=1, tie_embeddings=True),
    "llama-gqa2-untied": dict(n_kv_heads=2, tie_embeddings=False),
    "qwen3-qknorm": dict(n_kv_heads=2, qk_norm=True, tie_embeddings=True),
}
GGML_TYPE_F32 = 0
ATOL_F32_KV = 1e-4  # f32 weights, f32 KV cache: measured ~2e-6
ATOL_F16_KV = 1e-2  # f32 weights, llama.cpp's default f16 KV cache: measured ~1e-3
ATOL_F16_WEIGHTS = 2e-2  # f16 weights, f32 KV cache: measured ~3e-3
TEXTS = [*PROMPTS, "<|user|>Hi there<|end|><|assistant|>", "  spaces\tand\nnewlines  ", "émoji 🦙 ünïcode"]


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp(request.param)
    run_dir = make_run_dir(root / "run", tiny_export_config(**CASES[request.param]), train_steps=30)
    return run_dir, export_gguf(run_dir, root / "model.gguf")


def _llama(path: Path, f32_kv: bool = True):
    kv = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if f32_kv else {}
    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=128, n_threads=2, verbose=False, seed=0, **kv)


def _max_logit_diff(llm, ours, ids: list[int]) -> float:
    llm.reset()
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)])
    with torch.no_grad():
        mine = ours.logits(torch.tensor([ids]))[0].numpy()
    return float(np.abs(theirs - mine).max())


def test_llama_cpp_tokenizes_and_detokenizes_like_ours(exported):
    _, gguf_path = exported
    llm, tok = _llama(gguf_path), tiny_tokenizer()
    for text in TEXTS:
        ids = tok.encode(text).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
        assert llm.detokenize(ids, special=True).decode() == tok.decode(ids, skip_special_tokens=False), text
    assert llm.metadata["tokenizer.chat_template"] == CHAT_TEMPLATE


def test_llama_cpp_logits_match_ours(exported):
    run_dir, gguf_path = exported
    ours, tok = load_our_model(run_dir), tiny_tokenizer()
    for f32_kv, atol in ((True, ATOL_F32_KV), (False, ATOL_F16_KV)):
        llm = _llama(gguf_path, f32_kv)
        for prompt in PROMPTS:
            diff = _max_logit_diff(llm, ours, tok.encode(prompt).ids)
            assert diff <= atol, f"{prompt!r} (f32 KV cache: {f32_kv}): max |logit diff| {diff}"


def test_llama_cpp_greedy_continuation_matches_ours(exported):
    run_dir, gguf_path = exported
    ours, tok, llm = load_our_model(run_dir), tiny_tokenizer(), _llama(gguf_path)
    eos = tok.token_to_id("<|endoftext|>")
    for prompt in PROMPTS:
        ids = tok.encode(prompt).ids
        expected = generate_greedy(ours, torch.tensor([ids]), 20, eos_token_id=eos)
        got: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            got.append(int(token))
            if len(got) == len(expected):
                break
        assert len(expected) >= 10 or expected[-1] == eos
        assert got == expected, prompt


def test_f16_gguf_and_the_ollama_model_load_and_stay_close(exported, tmp_path):
    run_dir, _ = exported
    ours, tok = load_our_model(run_dir), tiny_tokenizer()
    f16 = export_gguf(run_dir, tmp_path / "m16.gguf", dtype="f16")
    ollama_gguf = export_ollama(run_dir, tmp_path / "ollama") / "model.gguf"  # f16 by default
    for path in (f16, ollama_gguf):
        llm = _llama(path)
        for prompt in PROMPTS:
            assert _max_logit_diff(llm, ours, tok.encode(prompt).ids) <= ATOL_F16_WEIGHTS
