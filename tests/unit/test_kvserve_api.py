"""The HTTP app over an in-process engine (no Ray): routes, OpenAI errors, streaming, usage, aborts."""

from __future__ import annotations

import asyncio
import json

import pytest

from perkunas_ray.engine.interface import SamplingParams

pytestmark = pytest.mark.unit

TOKEN = "unit-token"
H = {"Authorization": f"Bearer {TOKEN}"}
PROMPT = "Once upon a time there was a little girl named Lily. She liked to play with her toys in the park."


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from fastapi.testclient import TestClient

    from perkunas_ray.kvserve.api import create_app
    from perkunas_ray.kvserve.auth import TokenAuth
    from perkunas_ray.kvserve.backend import LocalServingBackend
    from perkunas_ray.kvserve.registry import single_model_registry
    from perkunas_ray.kvserve.service import EngineService
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    run = make_tiny_run_dir(tmp_path_factory.mktemp("kvserve") / "tiny")
    registry = single_model_registry(run, kv_policy={"num_blocks": 64})
    service = EngineService(registry.models["tiny"], metrics=False)
    backend = LocalServingBackend(registry, {"tiny": service})
    app = create_app(backend, TokenAuth({"unit": TOKEN}), max_body_bytes=4096)
    with TestClient(app) as client:
        yield client, service, backend


def _error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def test_models_and_health(served) -> None:
    client, _, _ = served
    assert client.get("/health").json() == {"status": "ok"}
    data = client.get("/v1/models", headers=H).json()["data"]
    assert data[0]["id"] == "tiny" and data[0]["kv_policy"]["num_blocks"] == 64
    assert client.get("/v1/models/tiny", headers=H).json()["max_model_len"] == 512
    _error(client.get("/v1/models/nope", headers=H), 404, "model_not_found")


def test_completion_and_cached_tokens(served) -> None:
    client, _, _ = served
    body = {"model": "tiny", "prompt": PROMPT + " one", "max_tokens": 4, "temperature": 0}
    first = client.post("/v1/completions", headers=H, json=body).json()
    assert first["object"] == "text_completion" and first["usage"]["completion_tokens"] == 4
    body["prompt"] = PROMPT + " two"
    second = client.post("/v1/completions", headers=H, json=body).json()
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16


def test_chat_stream_with_usage(served) -> None:
    client, _, _ = served
    resp = client.post("/v1/chat/completions", headers=H, json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True,
        "stream_options": {"include_usage": True}, "top_k": 5, "min_p": 0.01, "repetition_penalty": 1.1, "seed": 3})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    lines = [line[len("data: "):] for line in resp.text.split("\n\n") if line]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


def test_tokenize_roundtrip(served) -> None:
    client, _, _ = served
    tokens = client.post("/tokenize", headers=H, json={"model": "tiny", "prompt": "Lily"}).json()["tokens"]
    assert client.post("/detokenize", headers=H, json={"model": "tiny", "tokens": tokens}).json()["prompt"] == "Lily"


def test_errors_are_openai_shaped(served) -> None:
    client, _, _ = served
    assert _error(client.post("/v1/completions", json={}), 401)["type"] == "authentication_error"
    _error(client.post("/v1/completions", headers={"Authorization": "Bearer wrong"}, json={}), 401)
    _error(client.post("/v1/completions", headers=H, json={"model": "nope", "prompt": "x"}), 404, "model_not_found")
    _error(client.post("/v1/completions", headers=H, json={"model": "tiny", "prompt": "a b " * 300,
                                                           "max_tokens": 10}), 400, "context_length_exceeded")
    _error(client.post("/v1/completions", headers=H, content=b'{"model": "tiny", "prompt": '), 400, "invalid_json")
    assert _error(client.post("/v1/completions", headers=H, json={"model": "tiny", "prompt": "x",
                                                                  "max_tokens": "lots"}), 400)["param"] == "max_tokens"
    assert _error(client.post("/v1/completions", headers=H, json={"model": "tiny", "prompt": "x",
                                                                  "top_p": 0}), 400)["param"] == "top_p"
    _error(client.post("/v1/completions", headers=H, json=[1, 2]), 400)
    _error(client.post("/v1/chat/completions", headers=H, json={"model": "tiny", "messages": []}), 400)
    _error(client.post("/v1/completions", headers=H, content=b"x" * 5000), 413, "payload_too_large")
    _error(client.get("/no/such/route"), 404)


def test_dropped_stream_frees_blocks(served) -> None:
    """Closing a stream early (what a disconnect does) aborts the request and returns its blocks."""
    _, service, backend = served

    async def run() -> None:
        frontend = await backend.frontend("tiny")
        params = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
        chunks = backend.stream("tiny", "drop-1", frontend.encode(PROMPT), params)
        await chunks.__anext__()
        await chunks.aclose()
        for _ in range(50):
            stats = await service.stats()
            if stats["num_blocks_used"] == 0 and stats["num_running"] == 0:
                break
            await asyncio.sleep(0.05)
        assert stats["num_blocks_used"] == 0 and stats["num_running"] == 0 and stats["num_aborted"] >= 1

    asyncio.run(run())


def test_n_choices_stop_and_echo(served) -> None:
    client, _, _ = served
    out = client.post("/v1/completions", headers=H, json={"model": "tiny", "prompt": PROMPT, "max_tokens": 4,
                                                          "n": 2, "seed": 1, "echo": True}).json()
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert all(c["text"].startswith(PROMPT) for c in out["choices"])
    assert out["usage"]["completion_tokens"] == 8
    greedy = client.post("/v1/completions", headers=H, json={"model": "tiny", "prompt": PROMPT, "max_tokens": 8,
                                                             "temperature": 0}).json()["choices"][0]["text"]
    stop = greedy.strip().split()[1] if len(greedy.strip().split()) > 1 else greedy.strip()
    stopped = client.post("/v1/completions", headers=H, json={"model": "tiny", "prompt": PROMPT, "max_tokens": 8,
                                                              "temperature": 0, "stop": [stop]}).json()
    assert stopped["choices"][0]["finish_reason"] == "stop" and stop not in stopped["choices"][0]["text"]
