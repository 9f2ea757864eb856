"""The engine's log-probs: sampled tokens' and prompt tokens' equal a plain forward's log-softmax, under chunked
prefill, prefix caching (a prompt-logprobs request skips it), n > 1 and streaming."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from perkunas_ray.config import ModelConfig
from perkunas_ray.engine import KVPolicy, SamplingParams
from perkunas_ray.engine.toy import sample_lines, toy_engine, toy_tokenizer
from perkunas_ray.errors import ConfigError

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

CFG = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                  max_seq_len=128).validate()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return toy_tokenizer(sample_lines(300), vocab_size=512)


@pytest.fixture(scope="module")
def prompt(tokenizer: Any) -> list[int]:
    ids = [t for line in sample_lines(20)[5:] for t in tokenizer.encode(line).ids][:41]
    assert len(ids) == 41
    return ids


def dense_log_probs(engine: Any, token_ids: list[int]) -> torch.Tensor:
    """(T, V) log-softmax of the model's own dense forward over `token_ids`: row p predicts token p + 1."""
    with torch.no_grad():
        return engine.model.logits(torch.tensor([token_ids]))[0].float().log_softmax(-1)


def check_entries(entries: list[dict[int, float]], expected: torch.Tensor, token_ids: list[int], k: int) -> None:
    assert len(entries) == len(token_ids) == expected.shape[0]
    for entry, row, token in zip(entries, expected, token_ids, strict=True):
        top = torch.topk(row, k).indices.tolist()
        assert list(entry)[0] == token  # the chosen token first, as vLLM orders them
        assert set(entry) == {token, *top}
        for token_id, lp in entry.items():
            assert lp == pytest.approx(float(row[token_id]), abs=1e-5)


@pytest.mark.parametrize("policy", [KVPolicy(block_size=8, num_blocks=64),
                                    KVPolicy(block_size=8, num_blocks=64, max_num_batched_tokens=12)],
                         ids=["one-chunk", "chunked-prefill"])
def test_prompt_and_sampled_logprobs_equal_dense_forward(tokenizer: Any, prompt: list[int], policy: KVPolicy) -> None:
    engine = toy_engine(CFG, policy, tokenizer=tokenizer)
    engine.generate([prompt], SamplingParams(max_tokens=2, temperature=0))  # fills the prefix cache
    params = SamplingParams(max_tokens=6, temperature=0, logprobs=3, prompt_logprobs=2, ignore_eos=True)
    out = engine.generate([prompt], params)[0]
    assert out.num_cached_tokens == 0  # prompt log-probs need every position: no prefix-cache hit
    assert out.prompt_logprobs is not None and out.prompt_logprobs[0] is None
    completion = out.outputs[0]
    full = prompt + completion.token_ids
    expected = dense_log_probs(engine, full)
    check_entries(out.prompt_logprobs[1:], expected[:len(prompt) - 1], prompt[1:], 2)
    check_entries(completion.logprobs, expected[len(prompt) - 1:-1], completion.token_ids, 3)


def test_n_siblings_share_prompt_logprobs_and_stream_sends_them_once(tokenizer: Any, prompt: list[int]) -> None:
    engine = toy_engine(CFG, KVPolicy(block_size=8, num_blocks=64, enable_prefix_caching=False),
                        tokenizer=tokenizer)
    params = SamplingParams(max_tokens=4, temperature=1.0, seed=7, n=2, logprobs=0, prompt_logprobs=0,
                            ignore_eos=True)

    async def collect() -> list[Any]:
        return [out async for out in engine.stream("r1", prompt, params)]

    outputs = asyncio.run(collect())
    carrying = [out for out in outputs if out.prompt_logprobs is not None]
    assert carrying == outputs[:1]  # only the first output of a stream carries them
    expected = dense_log_probs(engine, prompt)
    check_entries(carrying[0].prompt_logprobs[1:], expected[:-1], prompt[1:], 0)
    for completion in outputs[-1].outputs:
        full = prompt + completion.token_ids
        check_entries(completion.logprobs, dense_log_probs(engine, full)[len(prompt) - 1:-1], completion.token_ids, 0)


def test_prompt_logprobs_bounds() -> None:
    with pytest.raises(ConfigError, match=r"sampling\.prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)
    with pytest.raises(ConfigError, match=r"sampling\.prompt_logprobs"):
        SamplingParams(prompt_logprobs=-1)
