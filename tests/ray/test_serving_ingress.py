"""The ingress on a real Ray Serve: one model on one replica serves the routes from the engine replica (one
deployment), a flood past an ingress's limit gets OpenAI-shaped 503s with Retry-After and nothing else, and
several ingress replicas share one rate budget per API key."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

pytestmark = pytest.mark.ray

TOKEN = "ingress-token"
H = {"Authorization": f"Bearer {TOKEN}"}
LONG = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 300, "ignore_eos": True, "stream": True}


async def _one_stream(http, url: str) -> tuple[int, bytes, str | None]:
    """A long stream: its status, the body of a refusal, Retry-After; an admitted stream is hung up at once."""
    async with http.stream("POST", f"{url}/v1/completions", json=LONG, headers=H) as resp:
        if resp.status_code != 200:
            return resp.status_code, await resp.aread(), resp.headers.get("retry-after")
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                break
        return 200, b"", None


def _flood(url: str, n: int) -> list[tuple[int, bytes, str | None]]:
    import httpx

    async def go() -> list[tuple[int, bytes, str | None]]:
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(*(_one_stream(http, url) for _ in range(n)))
    return asyncio.run(go())


def _assert_only_json_503s(results: list[tuple[int, bytes, str | None]], retry_after: str) -> int:
    """Every refusal is OpenAI's error shape with Retry-After; returns how many were admitted."""
    codes = sorted(code for code, _, _ in results)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
    for code, raw, header in results:
        if code == 503:
            body = json.loads(raw)  # not Serve's plain-text "Request dropped due to backpressure"
            assert set(body["error"]) == {"message", "type", "param", "code"}, body
            assert body["error"]["code"] == "overloaded" and header == retry_after, (body, header)
    return codes.count(200)


def _deployments() -> set[str]:
    from ray import serve

    from deployments.launch import APP_NAME

    return set(serve.status().applications[APP_NAME].deployments)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    return make_tiny_run_dir(tmp_path_factory.mktemp("ingress") / "tiny")


def test_one_model_one_replica_is_one_deployment_with_json_overload(tiny_run) -> None:
    """Through Serve's direct ingress: the replica's own HTTP port answers (and refuses) without the proxy."""
    from deployments import launch
    from perkunas_ray.kvserve.registry import parse_registry
    from perkunas_ray.kvserve.serve_options import INGRESS_NAME

    registry = parse_registry({"models": {"tiny": {"source": str(tiny_run), "num_cpus": 0, "max_ongoing_requests": 1,
                                                   "max_queued_requests": 1, "retry_after_s": 3}}})
    assert registry.combined
    with launch.serving(registry, f"test:{TOKEN}", num_cpus=2, direct_ingress=True) as url:  # as perkunas serve
        assert _deployments() == {INGRESS_NAME}, "the routes run in the engine replica"
        import httpx

        reply = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "Once", "max_tokens": 5},
                           headers=H, timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 5
        admitted = _assert_only_json_503s(_flood(url, 8), "3")
        assert admitted <= 2, "max_ongoing_requests 1 + max_queued_requests 1"
        stats = httpx.get(f"{url}/kvserve/stats", headers=H, timeout=30).json()
        deadline = time.time() + 30
        while stats["num_running"] and time.time() < deadline:  # the hung-up streams are aborted
            time.sleep(0.2)
            stats = httpx.get(f"{url}/kvserve/stats", headers=H, timeout=30).json()
        assert stats["num_running"] == 0 and stats["num_blocks_used"] == 0


def test_two_ingress_replicas_share_one_budget_and_refuse_a_flood_in_json(tiny_run) -> None:
    import httpx

    from deployments import launch
    from deployments.rate_board import RATE_BOARD_NAME
    from perkunas_ray.kvserve.registry import parse_registry

    burst = 20
    registry = parse_registry({"models": {"tiny": {"source": str(tiny_run), "num_cpus": 0}},
                               "ingress": {"num_replicas": 2, "max_ongoing_requests": 2, "retry_after_s": 4},
                               "limits": {"requests_per_minute": 60, "burst": burst}})
    assert not registry.combined
    with launch.serving(registry, f"test:{TOKEN},other:other-token", num_cpus=2) as url:
        assert RATE_BOARD_NAME in _deployments()
        admitted = _assert_only_json_503s(_flood(url, 12), "4")
        assert admitted <= 4, "2 ingress replicas x ingress.max_ongoing_requests 2"
        # One budget for the key across both replicas: a fresh connection per request spreads them over both,
        # and a bucket per replica would let about 2 x burst through.
        other = {"Authorization": "Bearer other-token"}
        start, codes = time.monotonic(), []
        for _ in range(2 * burst):
            with httpx.Client(timeout=30) as http:
                codes.append(http.get(f"{url}/v1/models", headers=other).status_code)
        refilled = int(time.monotonic() - start) + 1  # 1 request a second comes back
        assert set(codes) == {200, 429}, codes
        assert burst <= codes.count(200) <= burst + refilled, (codes.count(200), refilled)
