"""kvserve on a local Ray Serve under stress, with a separate ingress: a full engine queue answers 503 with
Retry-After (OpenAI-shaped), and an engine replica dying mid-stream ends the SSE stream with an error event, then
[DONE]. (The ingress's own limits and the combined mode: test_serving_ingress.py.)"""

from __future__ import annotations

import asyncio
import json

import pytest

from perkunas_ray.bench.soak import wait_idle

pytestmark = pytest.mark.ray

TOKEN = "overload-token"
H = {"Authorization": f"Bearer {TOKEN}"}
LONG = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 300, "ignore_eos": True, "stream": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from deployments import launch
    from perkunas_ray.kvserve.registry import load_registry
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    run = make_tiny_run_dir(tmp_path_factory.mktemp("overload") / "tiny")
    registry = tmp_path_factory.mktemp("reg") / "registry.yaml"
    # ingress separate: the engine replica's own queue is what fills up, and it is killed below without the routes
    registry.write_text(f"models:\n  tiny:\n    source: {run}\n    num_cpus: 0\n    max_ongoing_requests: 1\n"
                        "    max_queued_requests: 1\n    retry_after_s: 2\n    kv_policy: {num_blocks: 256}\n"
                        "ingress: {mode: separate}\n")
    with launch.serving(load_registry(registry), f"test:{TOKEN}", num_cpus=2) as url:
        yield url


def test_full_queue_is_503_with_retry_after(server) -> None:
    import httpx

    async def one(http: httpx.AsyncClient) -> tuple[int, dict, str | None]:
        async with http.stream("POST", f"{server}/v1/completions", json=LONG, headers=H) as resp:
            if resp.status_code != 200:
                raw = await resp.aread()
                assert raw.startswith(b"{"), (resp.status_code, raw[:300])
                return resp.status_code, json.loads(raw), resp.headers.get("retry-after")
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    break  # it was admitted; hang up
            return 200, {}, None

    async def burst() -> list[tuple[int, dict, str | None]]:
        async with httpx.AsyncClient(timeout=60) as http:
            return await asyncio.gather(*(one(http) for _ in range(8)))

    results = asyncio.run(burst())
    codes = sorted(code for code, _, _ in results)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
    for code, body, retry_after in results:
        if code == 503:
            assert set(body["error"]) == {"message", "type", "param", "code"}
            assert body["error"]["code"] == "overloaded" and retry_after == "2"
    stats = wait_idle(server, H)
    assert stats["num_blocks_used"] == 0 and stats["num_running"] == 0


def _engine_replica_actor():
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if "engine_tiny" in a["name"]]
    assert len(names) == 1, names
    return ray.get_actor(names[0]["name"], namespace=names[0]["namespace"])


def test_replica_dying_mid_stream_ends_with_error_then_done(server) -> None:
    import httpx
    import ray

    events = []
    with httpx.Client(timeout=60) as http, http.stream("POST", f"{server}/v1/completions", json=LONG,
                                                       headers=H) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[len("data: "):])
            if len(events) == 2:
                ray.kill(_engine_replica_actor(), no_restart=False)
    assert events[-1] == "[DONE]", events[-3:]
    error = json.loads(events[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"} and "Traceback" not in error["message"]
    assert sum(1 for e in events[:-2] if "choices" in json.loads(e)) >= 2  # tokens, then the error
