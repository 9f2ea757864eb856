"""An engine that owns its model keeps one copy of the linear weights: the kernels' panels. The model's own copies
are gone (nothing refers to them any more), the outputs are the same tokens, and an engine that does not own its
model leaves it whole."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

from perkunas_ray.engine.cpu_kernels import cpu_kernels
from perkunas_ray.engine.cpu_linear import StepLinear
from perkunas_ray.engine.decode_forward import linear_modules
from perkunas_ray.engine.interface import KVPolicy, SamplingParams
from perkunas_ray.engine.native import NativeEngine
from perkunas_ray.engine.toy import toy_tokenizer
from perkunas_ray.model.decoder import build_model
from tests.conftest import tiny_config

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(cpu_kernels() is None, reason="no C++ compiler here: no panels, nothing to free")]

POLICY = KVPolicy(block_size=4, num_blocks=64)
# One prompt long enough for a prefill chunk beyond the fused decode blocks' rows, and 17 streams: every path of a
# step (prefill through the panels, fused decodes, a decode batch too wide for the fused blocks).
PROMPTS = [[(7 * i + j) % 90 + 3 for j in range(5 + i % 7)] for i in range(17)] + [list(range(3, 43))]


def _linears(model) -> list[torch.nn.Linear]:
    mods = [m for block in model.model.layers.values() for m in linear_modules(block)]
    return mods + ([model.lm_head] if model.lm_head is not None else [])


@pytest.mark.parametrize("tied", [True, False])
def test_an_owning_engine_frees_the_models_linear_weights_and_generates_the_same_tokens(tied):
    model = build_model(tiny_config(tie_embeddings=tied), seed=5)
    reference = NativeEngine(copy.deepcopy(model), toy_tokenizer(), 0, POLICY)
    linears = _linears(model)
    expected_bytes = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    refs = [weakref.ref(m.weight) for m in linears]
    engine = NativeEngine(model, toy_tokenizer(), 0, POLICY, free_model_weights=True)
    gc.collect()
    assert engine.core.runner.freed_bytes == expected_bytes
    assert all(m.weight.numel() == 0 for m in linears)
    assert all(ref() is None for ref in refs), "a freed weight is still referenced somewhere"
    assert model.model.embed_tokens.weight.numel() > 0, "the embedding stays (a tied head reads it)"
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in engine.generate(PROMPTS, params)]
    want = [o.outputs[0].token_ids for o in reference.generate(PROMPTS, params)]
    assert got == want


def test_an_engine_that_does_not_own_its_model_leaves_it_whole():
    model = build_model(tiny_config(tie_embeddings=False), seed=5)
    before = [m.weight.clone() for m in _linears(model)]
    engine = NativeEngine(model, toy_tokenizer(), 0, POLICY)
    assert engine.core.runner.freed_bytes == 0
    assert all(torch.equal(m.weight, w) for m, w in zip(_linears(model), before, strict=True))


def test_a_released_weight_reads_back_from_its_panels():
    weight = torch.randn(37, 24)  # 37 rows: the last panel is padded
    linear = StepLinear(weight.clone(), kernels=cpu_kernels())
    assert linear.release_weight() and linear.weight is None
    assert torch.equal(linear.dense_weight(), weight)
    x = torch.randn(3, 24)
    torch.testing.assert_close(linear(x), x @ weight.t())
    assert not StepLinear(weight.to(torch.float64), kernels=cpu_kernels()).release_weight(), "no panels: kept"
