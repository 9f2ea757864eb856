"""`engine: vllm` behind the Serve app, driven by the openai client and httpx: the same tokens as the native engine and
transformers, log-probs as `perkunas eval` scores them, SSE, n/stop/seed, cached tokens, the native error codes, and
a dropped stream aborted inside vLLM. One vLLM engine (one replica) serves the whole module."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.vllm.conftest import TOKEN

PROMPT = "Once upon a time there was a little girl named Lily. She liked to play with her toys in the big park."
H = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(vllm_run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from deployments import launch
    from perkunas_ray.kvserve.registry import load_registry

    registry = tmp_path_factory.mktemp("vllm_reg") / "registry.yaml"
    registry.write_text(f"models:\n  tiny:\n    source: {vllm_run_dir}\n    engine: vllm\n    num_replicas: 1\n"
                        "    num_cpus: 0\n    kv_policy: {num_blocks: 128}\nmax_body_bytes: 8192\n")
    with launch.serving(load_registry(registry), f"test:{TOKEN}", num_cpus=2) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{server}/v1", api_key=TOKEN, max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(vllm_run_dir: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(vllm_run_dir / "tokenizer.json"))


def stats(server: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{server}/kvserve/stats", headers=H, timeout=30).json()


def test_export_cached_beside_the_run(server: str, vllm_run_dir: Path) -> None:
    from perkunas_ray.engine.vllm_source import CACHE_DIR, export_cache_dir, export_matches

    out = export_cache_dir(vllm_run_dir) / "step-1"
    assert out.parent.parent == vllm_run_dir.parent / CACHE_DIR  # beside the run, not inside it
    assert export_matches(out, vllm_run_dir, 1)
    assert not (vllm_run_dir / CACHE_DIR).exists()
    s = stats(server)
    assert s["block_size"] == 32 and s["num_blocks_total"] == 128 and s["step"] == 1


def test_greedy_tokens_equal_native_and_transformers(client: Any, vllm_run_dir: Path, tokenizer: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from perkunas_ray.bench.engine import hf_generate
    from perkunas_ray.engine.interface import SamplingParams
    from perkunas_ray.engine.vllm_source import export_cache_dir
    from perkunas_ray.kvserve.registry import single_model_registry
    from perkunas_ray.kvserve.service import build_engine

    prompts = [PROMPT, "The dog ran", "A cat and a bird sat on the tree near the house. " * 3]
    served = [client.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0, logprobs=0,
                                        extra_body={"ignore_eos": True}) for p in prompts]
    theirs = [out.choices[0].logprobs.tokens for out in served]  # one string per token (the API has no ids)
    ids = [tokenizer.encode(p).ids for p in prompts]
    native, _ = build_engine(single_model_registry(vllm_run_dir).models["tiny"])
    ours = [o.outputs[0].token_ids for o in native.generate(ids, SamplingParams(max_tokens=12, temperature=0,
                                                                                ignore_eos=True))]
    hf = AutoModelForCausalLM.from_pretrained(export_cache_dir(vllm_run_dir) / "step-1", dtype=torch.float32)
    reference = [hf_generate(hf, [p], 12)[0] for p in ids]
    assert ours == reference
    assert theirs == [[tokenizer.decode([t], skip_special_tokens=False) for t in o] for o in ours]
    assert [out.choices[0].text for out in served] == [tokenizer.decode(t, skip_special_tokens=False) for t in ours]


def test_logprobs_equal_eval_scorer(server: str, vllm_run_dir: Path, tokenizer: Any) -> None:
    import httpx

    from tests.unit.test_logprobs_http import eval_greedy_logprobs

    prompt_ids = tokenizer.encode(PROMPT).ids
    greedy, expected = eval_greedy_logprobs(vllm_run_dir, prompt_ids, 5)
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "logprobs": 2, "ignore_eos": True,
            "echo": True}
    choice = httpx.post(f"{server}/v1/completions", headers=H, json=body, timeout=60).json()["choices"][0]
    lp = choice["logprobs"]
    assert lp["token_logprobs"][0] is None  # nothing predicts the first prompt token
    assert lp["tokens"][len(prompt_ids):] == [tokenizer.decode([t], skip_special_tokens=False) for t in greedy]
    assert np.allclose(lp["token_logprobs"][1:], expected, atol=1e-4)
    for token, value, top in zip(lp["tokens"][len(prompt_ids):], lp["token_logprobs"][len(prompt_ids):],
                                 lp["top_logprobs"][len(prompt_ids):], strict=True):
        assert top[token] == value and value == max(top.values()) and 1 <= len(top) <= 3


def test_chat_sse_n_stop_seed(client: Any) -> None:
    messages = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "A dog."}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == out.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 5 == out.usage.completion_tokens
    many = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=1.0, n=3, seed=7)
    again = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=1.0, n=3, seed=7)
    assert sorted(c.index for c in many.choices) == [0, 1, 2] and many.usage.completion_tokens == 18
    assert [c.text for c in many.choices] == [c.text for c in again.choices]  # seeded: reproducible
    greedy = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, n=2)
    assert greedy.choices[0].text == greedy.choices[1].text
    text = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text
    stop = text[2:4]
    stopped = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].text == text[:text.index(stop)]


def test_cached_tokens_on_repeated_prefix(client: Any) -> None:
    prefix = "The old grey cat sat by the warm fire every evening and told the kittens about the long winter nights."
    first = client.completions.create(model="tiny", prompt=prefix + " First", max_tokens=2, temperature=0)
    second = client.completions.create(model="tiny", prompt=prefix + " Second", max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens >= 32  # at least one block of 32


def test_errors_as_native(server: str, client: Any) -> None:
    import httpx
    import openai

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="a b c " * 300, max_tokens=16)
    assert info.value.code == "context_length_exceeded"
    h = {**H, "Content-Type": "application/json"}
    resp = httpx.post(f"{server}/v1/chat/completions", content=b'{"model": "tiny", "messages": [', headers=h)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    resp = httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": 5}, headers=h)
    assert resp.status_code == 400 and set(resp.json()["error"]) == {"message", "type", "param", "code"}
    resp = httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": "x", "temperature": -1}, headers=h)
    assert resp.status_code == 400
    resp = httpx.post(f"{server}/v1/completions", content=json.dumps({"model": "tiny", "prompt": "x" * 9000}),
                      headers=h)
    assert resp.status_code == 413


def test_dropped_stream_is_aborted_in_vllm(server: str, client: Any) -> None:
    import httpx

    before = stats(server)
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as http, http.stream("POST", f"{server}/v1/completions", json=body,
                                                       headers=H) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                break  # one chunk, then hang up mid-stream
    deadline = time.time() + 30
    while time.time() < deadline:
        s = stats(server)
        if s["num_running"] == 0 and s["num_aborted"] > before["num_aborted"]:
            break
        time.sleep(0.2)
    assert s["num_running"] == 0 and s["num_waiting"] == 0 and s["num_blocks_used"] == 0
    assert s["num_aborted"] == before["num_aborted"] + 1
    # The counts above are the frontend's; the scheduler's own come with the next step: one more request, and
    # the step that finishes it reports nothing else running or waiting (the aborted one would still run).
    client.completions.create(model="tiny", prompt="The end.", max_tokens=2, temperature=0)
    s = stats(server)
    assert s["vllm_scheduler_num_running"] == 0 and s["vllm_scheduler_num_waiting"] == 0
    assert s["vllm_kv_cache_usage"] == 0.0
