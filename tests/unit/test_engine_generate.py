"""The engine's greedy output equals the reference greedy loop (tests/model_helpers.py) token for token, under every KV policy
that should not change it (prefix caching on/off, chunked prefill, preemption), for GQA, QK-norm and
soft-cap models; int8 KV agrees on top-1; sink+window pruning bounds KV memory.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from perkunas_ray.config import ModelConfig
from perkunas_ray.engine import KVPolicy, SamplingParams
from perkunas_ray.engine.native import NativeEngine
from perkunas_ray.engine.toy import sample_lines, toy_tokenizer
from perkunas_ray.model.decoder import build_model
from tests.model_helpers import generate_greedy

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

MAX_TOKENS = 20


def small_config(**overrides: Any) -> ModelConfig:
    base: dict[str, Any] = dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                                max_seq_len=128)
    base.update(overrides)
    return ModelConfig(**base).validate()



@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return toy_tokenizer(sample_lines(300), vocab_size=512)


@pytest.fixture(scope="module")
def prompts(tokenizer: Any) -> list[list[int]]:
    text = [t for line in sample_lines(60)[10:] for t in tokenizer.encode(line).ids]
    lengths = [3, 37, 9, 18, 1]
    starts = [0, 50, 100, 150, 200]
    out = [text[s:s + n] for s, n in zip(starts, lengths, strict=True)]
    # Two prompts sharing a 16- and a 24-token prefix with the 37-token one, to exercise prefix hits.
    out.append(out[1][:16] + text[300:307])
    out.append(out[1][:24] + text[400:402])
    assert [len(p) for p in out] == [3, 37, 9, 18, 1, 23, 26]
    return out


def reference(model: Any, prompts: list[list[int]], max_tokens: int = MAX_TOKENS, eos: int = 0) -> list[list[int]]:
    return [generate_greedy(model, torch.tensor([p]), max_tokens, eos_token_id=eos) for p in prompts]


def assert_no_blocks_leaked(engine: NativeEngine) -> None:
    stats = engine.stats()
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.num_blocks_used == 0 and stats.num_blocks_free == stats.num_blocks_total
    assert all(b.ref_count == 0 for b in engine.core.kv_manager.block_pool.blocks)


MODEL_OPTIONS = [
    {},
    {"n_kv_heads": 1},
    {"n_kv_heads": 4},
    {"qk_norm": True},
    {"attn_softcap": 5.0},
    {"qk_norm": True, "attn_softcap": 3.0, "n_kv_heads": 1, "tie_embeddings": False},
]


@pytest.mark.parametrize("opts", MODEL_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "base")
@pytest.mark.parametrize("caching", [True, False], ids=["prefix-cache", "no-cache"])
def test_greedy_matches_reference_for_mixed_length_batch(opts: dict, caching: bool, tokenizer: Any,
                                                         prompts: list[list[int]]) -> None:
    model = build_model(small_config(**opts), seed=3)
    # A small token budget forces chunked prefill alongside decodes.
    engine = NativeEngine(model, tokenizer, 0, KVPolicy(block_size=4, enable_prefix_caching=caching,
                                                        max_num_batched_tokens=24))
    expected = reference(model, prompts)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    outputs = engine.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert [o.prompt_token_ids for o in outputs] == prompts
    hits = [o.num_cached_tokens for o in outputs]
    # Run again: with caching every prompt now hits its full blocks, and the answer is the same.
    again = engine.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in again] == expected
    if caching:
        assert hits[5] == 16 and hits[6] == 24  # the shared prefix, in full blocks
        assert [o.num_cached_tokens for o in again] == [(len(p) - 1) // 4 * 4 for p in prompts]
        assert engine.stats().prefix_cache_hits_tokens > 0
    else:
        assert all(o.num_cached_tokens == 0 for o in outputs + again)
        assert engine.stats().prefix_cache_hits_tokens == 0
    assert all(o.finished and o.outputs[0].finish_reason == "length" for o in outputs)
    assert_no_blocks_leaked(engine)


@pytest.mark.parametrize("caching", [True, False], ids=["prefix-cache", "no-cache"])
def test_greedy_matches_reference_under_forced_preemption(caching: bool, tokenizer: Any,
                                                          prompts: list[list[int]]) -> None:
    model = build_model(small_config(), seed=4)
    # 16 blocks of 4 tokens: one 57-token sequence fits, the whole batch does not.
    engine = NativeEngine(model, tokenizer, 0, KVPolicy(block_size=4, num_blocks=16,
                                                        enable_prefix_caching=caching))
    outputs = engine.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0))
    assert [o.outputs[0].token_ids for o in outputs] == reference(model, prompts)
    stats = engine.stats()
    print(f"preemptions: {stats.num_preemptions}")
    assert stats.num_preemptions > 0
    assert_no_blocks_leaked(engine)


def test_max_model_len_is_capped_by_the_pool_and_long_prompts_are_rejected(tokenizer: Any) -> None:
    from perkunas_ray.errors import ConfigError

    engine = NativeEngine(build_model(small_config(), seed=0), tokenizer, 0, KVPolicy(block_size=4, num_blocks=5))
    assert engine.max_model_len == 20
    with pytest.raises(ConfigError, match="max_model_len is 20"):
        engine.generate([list(range(1, 22))], SamplingParams(max_tokens=2))
    out = engine.generate([list(range(1, 16))], SamplingParams(max_tokens=50, temperature=0))[0]
    assert len(out.outputs[0].token_ids) == 5 and out.outputs[0].finish_reason == "length"


@pytest.mark.parametrize("init_std", [0.02, 0.3], ids=["std0.02", "std0.3-sharp"])
def test_int8_kv_top1_agreement_with_model_dtype(init_std: float, tokenizer: Any, prompts: list[list[int]]) -> None:
    # The larger init makes a chaotic, sharply peaked model: quantisation noise does flip some choices.
    model = build_model(small_config(init_std=init_std), seed=5)
    engine = NativeEngine(model, tokenizer, 0, KVPolicy(block_size=4, kv_dtype="int8"))
    max_tokens = 40
    outputs = engine.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
    # Teacher-forced: at each step, is the int8 engine's choice the model-dtype argmax on the same context?
    agree = total = 0
    with torch.no_grad():
        for prompt, out in zip(prompts, outputs, strict=True):
            tokens = out.outputs[0].token_ids
            logits = model.logits(torch.tensor([prompt + tokens]))[0, len(prompt) - 1:-1]
            agree += int((logits.argmax(-1) == torch.tensor(tokens)).sum())
            total += len(tokens)
    rate = agree / total
    first_divergence = [next((i for i, (a, b) in enumerate(zip(o.outputs[0].token_ids, r, strict=True)) if a != b),
                             max_tokens) for o, r in zip(outputs, reference(model, prompts, max_tokens, eos=-1),
                                                         strict=True)]
    print(f"init_std {init_std}: int8 KV top-1 agreement with fp32 KV: {rate:.4f} ({agree}/{total} steps); "
          f"greedy sequences identical up to token {first_divergence}")
    assert rate >= 0.9
    stats = engine.stats()
    fp32_block = NativeEngine(model, tokenizer, 0, KVPolicy(block_size=4)).core.kv_bytes_per_block
    assert stats.kv_bytes_per_block < fp32_block / 3  # int8 codes + fp32 scales vs fp32 values


def test_sink_window_pruning_bounds_kv_blocks_for_long_generation(tokenizer: Any) -> None:
    import asyncio

    model = build_model(small_config(max_seq_len=64), seed=6)
    bs, sink, window = 4, 4, 32
    policy = KVPolicy(block_size=bs, pruning="sink_window", sink_tokens=sink, window_tokens=window,
                      max_num_batched_tokens=16, num_blocks=64)
    engine = NativeEngine(model, tokenizer, 0, policy)
    prompt = tokenizer.encode(sample_lines(12)[11]).ids[:10]
    max_tokens = 4 * window + 20  # past the window 4x, and past the model's max_seq_len
    samples: list[int] = []

    async def run() -> Any:
        final = None
        async for out in engine.stream("long", prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                                      ignore_eos=True)):
            samples.append(engine.stats().num_blocks_used)
            final = out
        return final

    final = asyncio.run(run())
    tokens = final.outputs[0].token_ids
    assert len(tokens) == max_tokens and final.outputs[0].finish_reason == "length"
    bound = -(-sink // bs) + -(-window // bs) + 2  # sink blocks, the window, a partial block, the one being written
    print(f"pruning: {len(prompt) + max_tokens} tokens, window {window}, max blocks in use {max(samples)} "
          f"(bound {bound}, unpruned would need {-(-(len(prompt) + max_tokens) // bs)})")
    assert max(samples) <= bound
    # Until the first block is pruned, the output equals full attention.
    ref = reference(model, [prompt], max_tokens=sink + window - len(prompt), eos=-1)[0]
    assert tokens[:len(ref)] == ref
    assert_no_blocks_leaked(engine)


def test_n_completions_share_prompt_blocks_with_and_without_prefix_caching(tokenizer: Any) -> None:
    model = build_model(small_config(), seed=7)
    prompt = list(range(1, 19))  # 18 tokens: 4 full blocks of 4
    for caching in (True, False):
        engine = NativeEngine(model, tokenizer, 0, KVPolicy(block_size=4, enable_prefix_caching=caching))
        params = SamplingParams(n=3, max_tokens=8, temperature=1.0, seed=11)
        engine.core.add(engine.core.new_request("multi", prompt, params))
        engine.core.step()  # one step admits all three and computes the prompt once
        tables = [engine.core.kv_manager.block_ids(f"multi/{i}") for i in range(3)]
        assert tables[1][:4] == tables[0][:4] and tables[2][:4] == tables[0][:4]
        assert [engine.core.kv_manager.block_pool.blocks[b].ref_count for b in tables[0][:4]] == [3, 3, 3, 3]
        assert tables[1][4] != tables[0][4]  # the partial last block is private
        while engine.core.has_unfinished():
            engine.core.step()
        assert_no_blocks_leaked(engine)
    out = engine.generate([prompt], params)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1  # different seeds per completion
    again = engine.generate([prompt], params)[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]  # seeded


def test_kv_events_and_block_hashes_match_for_a_router(tokenizer: Any) -> None:
    engine = NativeEngine(build_model(small_config(), seed=8), tokenizer, 0,
                          KVPolicy(block_size=4, num_blocks=12))
    prompt = list(range(1, 14))
    engine.generate([prompt], SamplingParams(max_tokens=4, temperature=0))
    events = engine.drain_kv_events()
    stored = [h for e in events if e.kind == "stored" for h in e.block_hashes]
    assert stored[:3] == engine.block_hashes(prompt)  # the prompt's 3 full blocks, same scheme
    assert engine.drain_kv_events() == []
    # Fill the pool with other prompts: the cached prefix is evicted and reported.
    engine.generate([list(range(100, 140))], SamplingParams(max_tokens=4, temperature=0))
    removed = [h for e in engine.drain_kv_events() if e.kind == "removed" for h in e.block_hashes]
    assert set(engine.block_hashes(prompt)) & set(removed)
    engine.reset_prefix_cache()
    assert [e.kind for e in engine.drain_kv_events()] == ["cleared"]
    assert engine.stats().num_blocks_cached == 0
