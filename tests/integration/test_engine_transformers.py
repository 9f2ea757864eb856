"""The native engine's greedy output equals transformers' `generate` on the same weights (Llama and Qwen3)."""

from __future__ import annotations

import pytest
import torch

from perkunas_ray.bench.engine import hf_generate, hf_model
from perkunas_ray.config import ModelConfig
from perkunas_ray.engine import KVPolicy, SamplingParams
from perkunas_ray.engine.native import NativeEngine
from perkunas_ray.engine.toy import toy_tokenizer
from perkunas_ray.model.decoder import build_model

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("opts", [{}, {"qk_norm": True, "n_kv_heads": 1, "tie_embeddings": False}],
                         ids=["llama", "qwen3"])
def test_engine_greedy_equals_transformers_generate(opts: dict) -> None:
    pytest.importorskip("transformers")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fields = dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=128)
        cfg = ModelConfig(**{**fields, **opts}).validate()
        model = build_model(cfg, seed=21)
        engine = NativeEngine(model, toy_tokenizer(vocab_size=512), 0, KVPolicy(block_size=8))
        gen = torch.Generator().manual_seed(0)
        prompts = [torch.randint(1, 512, (n,), generator=gen).tolist() for n in (5, 17, 30)]
        ours = engine.generate(prompts, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))
        hf = hf_model(model)
        theirs = [hf_generate(hf, [p], 16)[0] for p in prompts]
        assert [o.outputs[0].token_ids for o in ours] == theirs
        assert hf_generate(hf, prompts, 16) == theirs  # left-padded batch, as the benchmark runs it
    finally:
        torch.set_num_threads(before)
