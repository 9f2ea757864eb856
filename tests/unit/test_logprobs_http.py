"""Log-probs over HTTP on the in-process app: completions (top-N, echo with the prompt's, max_tokens 0 as
lm-evaluation-harness may send), chat (logprobs / top_logprobs), streamed equal to whole, equal to `perkunas eval`'s
scorer; bad values are 400 naming the field."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.model_helpers import generate_greedy

pytestmark = pytest.mark.unit

TOKEN = "unit-token"
H = {"Authorization": f"Bearer {TOKEN}"}
PROMPT = "Once upon a time there was a little girl named Lily. She liked to play with her toys."


def eval_greedy_logprobs(run_dir: Path, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    """The greedy continuation of a prompt (DecoderLM's own KV-cache loop), and the log-prob of every token after
    the first of prompt + continuation, given the tokens before it, by `perkunas eval`'s in-process scorer."""
    import torch

    from perkunas_ray.eval import load_eval_model, model_scorer

    model = load_eval_model(run_dir).model
    with torch.no_grad():
        greedy = generate_greedy(model, torch.tensor([prompt_ids]), max_tokens) if max_tokens else []
    ids = np.array([prompt_ids + greedy], dtype=np.int64)
    return greedy, model_scorer(model)(ids[:, :-1], ids[:, 1:])[0].tolist()


def stream_events(lines: Any) -> list[dict[str, Any]]:
    data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def joined_completion_logprobs(chunks: list[dict[str, Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for key in out:
                out[key] += choice["logprobs"][key] if choice["logprobs"] else []
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from fastapi.testclient import TestClient

    from perkunas_ray.kvserve.api import create_app
    from perkunas_ray.kvserve.auth import TokenAuth
    from perkunas_ray.kvserve.backend import LocalServingBackend
    from perkunas_ray.kvserve.registry import single_model_registry
    from perkunas_ray.kvserve.service import EngineService
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    run = make_tiny_run_dir(tmp_path_factory.mktemp("logprobs") / "tiny")
    registry = single_model_registry(run, kv_policy={"num_blocks": 64})
    service = EngineService(registry.models["tiny"], metrics=False)
    app = create_app(LocalServingBackend(registry, {"tiny": service}), TokenAuth({"unit": TOKEN}))
    with TestClient(app) as client:
        yield client, run, service.engine.tokenizer


def test_completion_logprobs_equal_eval_and_stream(served: Any) -> None:
    client, run, tokenizer = served
    prompt_ids = tokenizer.encode(PROMPT).ids
    greedy, expected = eval_greedy_logprobs(run, prompt_ids, 5)
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "logprobs": 2, "ignore_eos": True}
    choice = client.post("/v1/completions", headers=H, json=body).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == [tokenizer.decode([t], skip_special_tokens=False) for t in greedy]
    assert np.allclose(logprobs["token_logprobs"], expected[len(prompt_ids) - 1:], atol=1e-4)
    for token, lp, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert 1 <= len(top) <= 3 and top[token] == lp  # the chosen token plus the top 2
        assert lp == max(top.values())  # greedy: the chosen one is the most likely
    assert logprobs["text_offset"] == [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(5)]
    streamed = stream_events(client.post("/v1/completions", headers=H, json={**body, "stream": True}).iter_lines())
    assert joined_completion_logprobs(streamed) == logprobs
    # echo: the prompt's tokens first, the first one unscored (nothing predicts it), then the completion's.
    echoed = client.post("/v1/completions", headers=H, json={**body, "echo": True}).json()["choices"][0]
    assert echoed["text"] == PROMPT + choice["text"]
    echo_lp = echoed["logprobs"]
    assert echo_lp["token_logprobs"][0] is None and echo_lp["top_logprobs"][0] is None
    assert echo_lp["tokens"][len(prompt_ids):] == logprobs["tokens"]
    assert np.allclose(echo_lp["token_logprobs"][1:], expected, atol=1e-4)
    streamed = stream_events(client.post("/v1/completions", headers=H,
                                         json={**body, "echo": True, "stream": True}).iter_lines())
    assert joined_completion_logprobs(streamed) == echo_lp
    assert "".join(c["choices"][0]["text"] for c in streamed) == echoed["text"]


def test_echo_scores_prompt_like_eval(served: Any) -> None:
    """lm-evaluation-harness' loglikelihood request (echo, logprobs 1, max_tokens 1 or 0) on a known text."""
    client, run, tokenizer = served
    prompt_ids = tokenizer.encode(PROMPT).ids
    _, expected = eval_greedy_logprobs(run, prompt_ids, 0)
    for max_tokens in (1, 0):
        body = {"model": "tiny", "prompt": prompt_ids, "max_tokens": max_tokens, "temperature": 0, "logprobs": 1,
                "echo": True}
        choice = client.post("/v1/completions", headers=H, json=body).json()["choices"][0]
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(prompt_ids) + max_tokens
        assert lp["token_logprobs"][0] is None
        assert np.allclose(lp["token_logprobs"][1:len(prompt_ids)], expected, atol=1e-4)
        if max_tokens == 0:
            assert choice["text"] == tokenizer.decode(prompt_ids, skip_special_tokens=False)
        for value, top in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:], strict=True):
            assert value in top.values() and len(top) <= 2
        streamed = stream_events(client.post("/v1/completions", headers=H,
                                             json={**body, "stream": True}).iter_lines())
        assert joined_completion_logprobs(streamed)["token_logprobs"] == lp["token_logprobs"]


def test_chat_logprobs_and_top_logprobs(served: Any) -> None:
    client, _, _ = served
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 4,
            "temperature": 0, "logprobs": True, "top_logprobs": 3}
    out = client.post("/v1/chat/completions", headers=H, json=body).json()
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == out["usage"]["completion_tokens"]
    for item in content:
        tops = [t["logprob"] for t in item["top_logprobs"]]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and item["logprob"] == tops[0]  # greedy
    joined = b"".join(bytes(i["bytes"]) for i in content).decode("utf-8", errors="replace")
    assert joined.startswith(out["choices"][0]["message"]["content"])
    chunks = stream_events(client.post("/v1/chat/completions", headers=H, json={**body, "stream": True}).iter_lines())
    streamed = [i for c in chunks for ch in c["choices"] if ch["logprobs"] for i in ch["logprobs"]["content"]]
    assert streamed == content
    plain = client.post("/v1/chat/completions", headers=H, json={**body, "top_logprobs": None}).json()
    assert all(i["top_logprobs"] == [] for i in plain["choices"][0]["logprobs"]["content"])
    off = client.post("/v1/chat/completions", headers=H,
                      json={**body, "logprobs": False, "top_logprobs": None}).json()
    assert off["choices"][0]["logprobs"] is None
    assert math.isfinite(content[0]["logprob"])


def test_chat_bytes_rebuild_characters_split_across_tokens() -> None:
    """A byte-level BPE splits 日 into three one-byte tokens: each token's text is U+FFFD, its bytes are its own."""
    from perkunas_ray.engine.toy import sample_lines, toy_tokenizer
    from perkunas_ray.kvserve.logprobs import LogprobsFormat

    tokenizer = toy_tokenizer(sample_lines(50), vocab_size=300)
    ids = tokenizer.encode("日本 café").ids
    content = LogprobsFormat(1, tokenizer).chat(ids, [{i: -1.0} for i in ids])["content"]
    assert content[0]["token"] == "\ufffd" and len(content[0]["bytes"]) == 1
    assert b"".join(bytes(item["bytes"]) for item in content).decode("utf-8") == "日本 café"
    assert [item["top_logprobs"][0]["bytes"] for item in content] == [item["bytes"] for item in content]


@pytest.mark.parametrize(("route", "extra", "param"), [
    ("/v1/completions", {"logprobs": 21}, "logprobs"),
    ("/v1/completions", {"logprobs": -1}, "logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
])
def test_bad_logprobs_are_400_naming_the_field(served: Any, route: str, extra: dict[str, Any], param: str) -> None:
    client, _, _ = served
    base = {"model": "tiny", "max_tokens": 2}
    base.update({"prompt": PROMPT} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "x"}]})
    resp = client.post(route, headers=H, json={**base, **extra})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
