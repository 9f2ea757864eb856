"""kvserve on a local Ray Serve, driven by the official openai client and raw httpx: routes, errors, disconnects."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.ray

TOKEN = "ray-test-token"
METRICS_PORT = [0]
PROMPT = "Once upon a time there was a little girl named Lily. She liked to play with her toys in the big park."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from deployments import launch
    from perkunas_ray.kvserve.registry import load_registry
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    run = make_tiny_run_dir(tmp_path_factory.mktemp("kvserve") / "tiny")
    registry = tmp_path_factory.mktemp("reg") / "registry.yaml"
    registry.write_text(f"models:\n  tiny:\n    source: {run}\n    num_replicas: 1\n    num_cpus: 0\n"
                        "    kv_policy: {num_blocks: 128}\nmax_body_bytes: 8192\n")
    METRICS_PORT[0] = launch.free_port()
    with launch.serving(load_registry(registry), f"test:{TOKEN}", num_cpus=2,
                        metrics_export_port=METRICS_PORT[0]) as url:
        yield url


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server}/v1", api_key=TOKEN, max_retries=0)


def test_models(client) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert models[0].model_extra["kv_policy"]["num_blocks"] == 128
    assert client.models.retrieve("tiny").id == "tiny"


def test_completions_plain_and_stream(client) -> None:
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0)
    assert out.usage.completion_tokens == 6 and out.choices[0].finish_reason == "length"
    pieces = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces if p.choices) == out.choices[0].text  # greedy: the same


def test_chat_plain_and_stream(client) -> None:
    messages = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "A dog."}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0)
    assert out.choices[0].message.role == "assistant" and out.usage.completion_tokens == 5
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == out.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_cached_tokens_on_repeated_prefix(client) -> None:
    prefix = "The old grey cat sat by the warm fire every evening and told the kittens about the long winter."
    first = client.completions.create(model="tiny", prompt=prefix + " First", max_tokens=2, temperature=0)
    second = client.completions.create(model="tiny", prompt=prefix + " Second", max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0  # a prefix this server has not seen
    assert second.usage.prompt_tokens_details.cached_tokens >= 16


def test_errors(server, client) -> None:
    import httpx
    import openai

    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="a b c " * 200, max_tokens=16)
    assert info.value.code == "context_length_exceeded"
    h = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    resp = httpx.post(f"{server}/v1/chat/completions", content=b'{"model": "tiny", "messages": [', headers=h)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    resp = httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": 5}, headers=h)
    assert resp.status_code == 400 and set(resp.json()["error"]) == {"message", "type", "param", "code"}
    resp = httpx.post(f"{server}/v1/completions", content=json.dumps({"model": "tiny", "prompt": "x" * 9000}),
                      headers=h)
    assert resp.status_code == 413
    assert httpx.get(f"{server}/health").status_code == 200  # open without a token


def test_client_disconnect_frees_blocks(server) -> None:
    import httpx

    h = {"Authorization": f"Bearer {TOKEN}"}
    before = httpx.get(f"{server}/kvserve/stats", headers=h).json()
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{server}/v1/completions", json=body,
                                                       headers=h) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                break  # one chunk, then hang up mid-stream
    deadline = time.time() + 15
    while time.time() < deadline:
        stats = httpx.get(f"{server}/kvserve/stats", headers=h).json()
        if stats["num_running"] == 0 and stats["num_blocks_used"] == 0 and stats["num_aborted"] > before["num_aborted"]:
            break
        time.sleep(0.2)
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
    assert stats["num_blocks_used"] == 0
    assert stats["num_aborted"] == before["num_aborted"] + 1  # it was aborted, not run to its 400 tokens


def test_serving_metrics_exported(server, client) -> None:
    """Every serving metric name of the dashboards' contract reaches Ray's Prometheus endpoint."""
    import httpx

    from perkunas_ray.telemetry import metric_names as names

    client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3)
    list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3, stream=True))  # inter-token times
    wanted = {n for n in names.ALL_NAMES if n.startswith("perkunas_serve_")}
    assert len(wanted) == 13
    # One model on one replica: the routes run in the engine replica and no router decides anything (its counter
    # is checked with a separate ingress in tests/integration/test_observability_prometheus.py).
    wanted.remove(names.SERVE_ROUTER_DECISIONS)
    missing = wanted
    deadline = time.time() + 45
    while missing and time.time() < deadline:
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT[0]}/metrics", timeout=10).text
        missing = {n for n in wanted if f"{names.RAY_PREFIX}{n}" not in text}
        if missing:
            time.sleep(2)
    assert not missing, f"not exported: {sorted(missing)}"
