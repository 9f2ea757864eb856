"""The benchmarks' load client against a real HTTP server (aiohttp's): SSE events split across reads, CRLF line
ends, usage from the last chunk, whole replies, and an error status that names the server and the body."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from perkunas_ray.bench import load


def _event(data: dict | str, end: bytes = b"\n\n") -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    return b"data: " + payload.encode() + end


async def _sse_handler(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body.get("model") != "m":
        return web.json_response({"error": {"message": "no such model"}}, status=404)
    if not body.get("stream"):
        return web.json_response({"choices": [{"text": "abc"}],
                                  "usage": {"prompt_tokens": 4, "completion_tokens": 3,
                                            "prompt_tokens_details": {"cached_tokens": 2}}})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    end = b"\r\n\r\n" if body.get("crlf") else b"\n\n"
    events = [_event({"choices": [{"index": 0, "text": t}]}, end) for t in ("a", "b", "c")]
    events.append(_event({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}, end))
    events.append(_event({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3,
                                                   "prompt_tokens_details": {"cached_tokens": 2}}}, end))
    events.append(_event("[DONE]", end))
    wire = b"".join(events)
    # Cut the stream mid-event, with pauses, so events straddle the client's reads.
    for start in range(0, len(wire), 37):
        await resp.write(wire[start:start + 37])
        await asyncio.sleep(0.002)
    await resp.write_eof()
    return resp


async def _with_server(scenario):
    app = web.Application()
    app.router.add_post("/v1/completions", _sse_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        return await scenario(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("crlf", [False, True])
def test_a_stream_counts_text_chunks_and_takes_usage_from_the_last_chunk(crlf):
    async def scenario(url: str):
        async with load.session(2) as client:
            return await load.stream_completion(client, url, {"model": "m", "prompt": [1, 2], "crlf": crlf})

    r = load.run(_with_server(scenario))
    assert r["num_chunks"] == 3, "three text chunks; the finish and usage chunks carry no text"
    assert r["completion_tokens"] == 3 and r["prompt_tokens"] == 4 and r["cached_tokens"] == 2
    assert len(r["itl"]) == 2 and all(gap >= 0 for gap in r["itl"])
    assert 0 < r["ttft"] <= r["e2e"]


def test_drive_summarizes_streamed_and_whole_requests():
    bodies = [{"model": "m", "prompt": [i]} for i in range(5)]
    streamed = load.run(_with_server(lambda url: load.drive(url, bodies, 2)))
    whole = load.run(_with_server(lambda url: load.drive(url, bodies, 2, stream=False)))
    for summary in (streamed, whole):
        assert summary["num_requests"] == 5 and summary["output_tokens"] == 15
        assert summary["prefix_hit_rate"] == pytest.approx(0.5)
    assert streamed["chunks_per_request"] == 3 and whole["chunks_per_request"] == 1


@pytest.mark.parametrize("stream", [True, False])
def test_an_error_status_names_the_server_and_the_body(stream):
    async def scenario(url: str):
        async with load.session(1) as client:
            send = load.stream_completion if stream else load.complete
            return await send(client, url, {"model": "other", "prompt": [1]})

    with pytest.raises(RuntimeError, match=r"HTTP 404: .*no such model"):
        load.run(_with_server(scenario))
