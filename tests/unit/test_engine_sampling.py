"""Sampler and stop conditions: filters, seeds, repetition penalty, stop strings / token ids, EOS, logprobs."""

from __future__ import annotations

import pytest
import torch

from perkunas_ray.config import ModelConfig
from perkunas_ray.engine import KVPolicy, SamplingParams
from perkunas_ray.engine.native import NativeEngine
from perkunas_ray.engine.sampler import apply_repetition_penalty, filter_logits
from perkunas_ray.engine.toy import sample_lines, toy_tokenizer
from perkunas_ray.errors import ConfigError
from perkunas_ray.model.decoder import build_model

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]



@pytest.fixture(scope="module")
def engine() -> NativeEngine:
    cfg = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                      max_seq_len=128).validate()
    return NativeEngine(build_model(cfg, seed=9), toy_tokenizer(sample_lines(300), 512), 0, KVPolicy(block_size=4))


PROMPT = "Once upon a time, there was a little girl named Lily."


def test_filters_keep_the_expected_tokens() -> None:
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    kept = lambda **kw: torch.isfinite(filter_logits(logits, SamplingParams(**kw))).nonzero().flatten().tolist()  # noqa: E731
    assert kept(top_k=2) == [0, 1]
    probs = logits.softmax(-1)  # 0.636, 0.234, 0.086, ...
    assert kept(top_p=0.5) == [0]
    assert kept(top_p=0.8) == [0, 1]
    assert kept(top_p=0.9) == [0, 1, 2]
    assert kept(min_p=0.3) == [0, 1]  # 0.234 >= 0.3 * 0.636
    assert kept(min_p=0.4) == [0]
    assert float(probs[:2].sum()) < 0.9
    penalised = apply_repetition_penalty(logits, [0, 4, 4], 2.0)
    assert penalised.tolist() == [1.5, 2.0, 1.0, 0.0, -2.0]


def test_seeded_sampling_is_reproducible_and_filters_can_reduce_to_greedy(engine: NativeEngine) -> None:
    greedy = engine.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0))[0].outputs[0].token_ids
    sampled = [engine.generate([PROMPT], SamplingParams(max_tokens=12, temperature=1.0, seed=s))[0]
               .outputs[0].token_ids for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]
    for params in (SamplingParams(max_tokens=12, top_k=1, seed=3), SamplingParams(max_tokens=12, top_p=1e-6, seed=3),
                   SamplingParams(max_tokens=12, min_p=1.0, seed=3)):
        assert engine.generate([PROMPT], params)[0].outputs[0].token_ids == greedy
    # Seeded requests give the same tokens whether they run alone or batched with others.
    batch = engine.generate([PROMPT, "The dog", "A"], [SamplingParams(max_tokens=12, seed=1),
                                                       SamplingParams(max_tokens=5, seed=9),
                                                       SamplingParams(max_tokens=7, temperature=0.5)])
    assert batch[0].outputs[0].token_ids == sampled[0]


def test_repetition_penalty_avoids_seen_tokens(engine: NativeEngine) -> None:
    prompt_ids = engine.tokenizer.encode(PROMPT).ids
    out = engine.generate([prompt_ids], SamplingParams(max_tokens=30, temperature=0, repetition_penalty=1e4))[0]
    tokens = out.outputs[0].token_ids
    assert len(set(tokens)) == len(tokens) and not set(tokens) & set(prompt_ids)
    plain = engine.generate([prompt_ids], SamplingParams(max_tokens=30, temperature=0))[0].outputs[0].token_ids
    assert len(set(plain)) < len(plain)  # the untrained model does loop without it


def test_stop_strings_truncate_text_and_stop_token_ids_and_eos_end_generation(engine: NativeEngine) -> None:
    base = engine.generate([PROMPT], SamplingParams(max_tokens=30, temperature=0))[0].outputs[0]
    assert base.finish_reason == "length" and len(base.token_ids) == 30
    assert base.text == engine.tokenizer.decode(base.token_ids, skip_special_tokens=True)
    text = base.text
    stop = next(text[i:i + 3] for i in range(8, len(text) - 3) if "\ufffd" not in text[i:i + 3])
    out = engine.generate([PROMPT], SamplingParams(max_tokens=30, temperature=0, stop=["zzzz-never", stop]))[0]
    seq = out.outputs[0]
    assert seq.finish_reason == "stop" and seq.stop_reason == stop
    assert seq.text == text[:text.index(stop)]
    assert seq.token_ids == base.token_ids[:len(seq.token_ids)] and len(seq.token_ids) < 30

    stop_id = base.token_ids[6]
    seq = engine.generate([PROMPT], SamplingParams(max_tokens=30, temperature=0, stop_token_ids=[stop_id]))[0].outputs[0]
    first = base.token_ids.index(stop_id)
    assert seq.token_ids == base.token_ids[:first + 1] and seq.stop_reason == stop_id
    assert seq.finish_reason == "stop"

    # EOS: an engine whose EOS is that token stops there (the token is kept, its text is not) ...
    eos_engine = NativeEngine(engine.model, engine.tokenizer, stop_id, KVPolicy(block_size=4))
    seq = eos_engine.generate([PROMPT], SamplingParams(max_tokens=30, temperature=0))[0].outputs[0]
    assert seq.token_ids == base.token_ids[:first + 1] and seq.finish_reason == "stop"
    assert seq.text == engine.tokenizer.decode(base.token_ids[:first], skip_special_tokens=True)
    # ... unless ignore_eos.
    seq = eos_engine.generate([PROMPT], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))[0].outputs[0]
    assert seq.token_ids == base.token_ids


def test_logprobs_are_the_models_distribution(engine: NativeEngine) -> None:
    prompt_ids = engine.tokenizer.encode(PROMPT).ids
    seq = engine.generate([prompt_ids], SamplingParams(max_tokens=4, temperature=0, logprobs=3))[0].outputs[0]
    assert seq.logprobs is not None and len(seq.logprobs) == 4
    with torch.no_grad():
        expected = torch.log_softmax(engine.model.logits(torch.tensor([prompt_ids]))[0, -1], -1)
    first = seq.logprobs[0]
    top = torch.topk(expected, 3)
    assert set(first) == set(top.indices.tolist())  # greedy: the sampled token is the top one
    for token_id, lp in first.items():
        assert lp == pytest.approx(float(expected[token_id]), abs=1e-5)
    assert max(first, key=first.get) == seq.token_ids[0]
    seq = engine.generate([prompt_ids], SamplingParams(max_tokens=2, temperature=1.0, seed=0, logprobs=0))[0].outputs[0]
    assert [list(d) for d in seq.logprobs] == [[t] for t in seq.token_ids]


def test_bad_requests_raise_config_errors(engine: NativeEngine) -> None:
    with pytest.raises(ConfigError, match="sampling.temperature"):
        engine.generate([PROMPT], SamplingParams(temperature=-1))
    with pytest.raises(ConfigError, match="prompt token ids"):
        engine.generate([[1, 2, 100000]], SamplingParams())
    with pytest.raises(ConfigError, match="empty"):
        engine.generate([[]], SamplingParams())
    with pytest.raises(ConfigError, match="2 SamplingParams for 1 prompts"):
        engine.generate([PROMPT], [SamplingParams(), SamplingParams()])
    assert engine.stats().num_waiting == 0
