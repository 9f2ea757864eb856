"""Fuzz the running kvserve app from its own OpenAPI schema (schemathesis): real HTTP, real Serve, a real toy
model, every route, positive and negative cases, with and without auth, a fixed seed. Properties: no 5xx,
every error in OpenAI's shape (SSE error events included), and no request leaves KV blocks behind."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the fuzz tests need schemathesis (dev extra)")
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from perkunas_ray.bench.soak import wait_idle  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.ray]

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEED = 20261129
CASES_PER_RUN = 80  # at most, x 8 operations x 2 modes x 2 (with, without auth); some runs exhaust sooner
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from deployments import launch
    from perkunas_ray.kvserve.registry import load_registry
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    run = make_tiny_run_dir(tmp_path_factory.mktemp("fuzz") / "tiny")
    registry = tmp_path_factory.mktemp("reg") / "registry.yaml"
    # Small bounds keep every generated request cheap: at most 64 tokens of context and 64 generated.
    registry.write_text(f"models:\n  tiny:\n    source: {run}\n    num_cpus: 0\n    max_model_len: 64\n"
                        "    kv_policy: {num_blocks: 64}\n"
                        "limits: {max_n: 4, max_total_tokens: 64}\nmax_body_bytes: 65536\n")
    with launch.serving(load_registry(registry), f"fuzz:{TOKEN}", num_cpus=2) as url:
        yield url


def _errors_in(response: Any) -> list[Any]:
    """The error objects a response carries: its body when it failed, or the error events of an SSE stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [e[len("data: "):] for e in response.text.split("\n\n") if e.startswith("data: ")]
        assert events and events[-1] == "[DONE]", events[-2:]
        payloads = [json.loads(e) for e in events[:-1]]
        return [p["error"] for p in payloads if "error" in p]
    if response.status_code < 400:
        return []
    body = response.json()
    assert set(body) == {"error"}, body
    return [body["error"]]


def _check(response: Any, counts: dict[str, int]) -> None:
    counts["cases"] += 1
    counts[str(response.status_code)] = counts.get(str(response.status_code), 0) + 1
    assert response.status_code < 500, (response.status_code, response.text[:500])
    for error in _errors_in(response):
        assert isinstance(error, dict) and set(error) == ERROR_KEYS, error
        assert isinstance(error["message"], str) and error["message"]


def _fuzz(http: Any, operation: Any, mode: Any, base_url: str, headers: dict[str, str] | None,
          counts: dict[str, int]) -> None:
    @seed(SEED)
    @settings(max_examples=CASES_PER_RUN, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if mode.value == "positive":  # name the served model, so valid requests reach the engine
            if isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "tiny"
            if case.path_parameters and "model_id" in case.path_parameters:
                case.path_parameters["model_id"] = "tiny"
            if case.query and "model" in case.query:
                case.query["model"] = "tiny"
        # Sent with httpx: schemathesis' own requests transport trips over urllib3-future, which httpx2 installs.
        kwargs = case.as_transport_kwargs(base_url=base_url)
        kwargs["headers"] = {k: v for k, v in kwargs["headers"].items() if k.lower() != "authorization"}
        kwargs["headers"].update(headers or {})
        response = http.request(kwargs["method"], kwargs["url"], headers=kwargs["headers"], params=kwargs["params"],
                                content=kwargs.get("data"), json=kwargs.get("json"))
        _check(response, counts)

    try:
        run()
    except Unsatisfiable:  # negative mode and an operation with no input to break (GET /health)
        assert mode.value == "negative", operation.label
        counts["unsatisfiable"] = counts.get("unsatisfiable", 0) + 1


def test_fuzz_every_route_from_the_schema(server) -> None:
    import httpx
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = sorted(op.label for op in operations)
    assert len(operations) == 8, labels
    counts: dict[str, int] = {"cases": 0}
    started = time.time()
    with httpx.Client(timeout=60) as http:
        for headers in (AUTH, None):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                for operation in operations:
                    _fuzz(http, operation, mode, server, headers, counts)
    elapsed = time.time() - started
    stats = wait_idle(server, AUTH)
    idle = (stats["num_running"], stats["num_waiting"], stats["num_blocks_used"]) == (0, 0, 0)
    print(f"\nfuzz: {counts['cases']} cases in {elapsed:.0f} s over {len(operations)} operations; statuses "
          f"{ {k: v for k, v in sorted(counts.items()) if k[0].isdigit()} }; negative runs with nothing to break: "
          f"{counts.get('unsatisfiable', 0)}; engine after: "
          f"{stats['num_blocks_used']} blocks used, {stats['num_running']} running, {stats['num_failed']} failed")
    assert counts["cases"] >= 2000
    assert idle, stats
    assert stats["num_failed"] == 0
