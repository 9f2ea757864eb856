"""An HTTP load client for OpenAI `/v1/completions` (streamed or not): per-request timings, and their summary.

The client shares the machine's cores with the server it measures, so it should cost as little as it can:
aiohttp on uvloop reads and parses an SSE event for about a quarter of the CPU httpx on asyncio takes (0.04 vs
0.14 ms an event, 16 streams of 128 events from a canned server), which is what vLLM's own serving benchmark
uses too (aiohttp). Run the coroutines with `run`.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp
import uvloop

TIMEOUT_S = 300


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """Run a client coroutine on uvloop (see the module's docstring)."""
    return uvloop.run(main)


def session(concurrency: int) -> aiohttp.ClientSession:
    """A client session that keeps `concurrency` connections (and two spare) alive."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + 2),
                                 timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))


def _sse_payloads(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The complete SSE events' `data:` payloads in `buffer` (CRLF or LF line ends), and the incomplete rest."""
    if b"\r" in buffer:
        buffer = buffer.replace(b"\r\n", b"\n")
    *events, rest = buffer.split(b"\n\n")
    return [e[6:] for e in events if e.startswith(b"data: ") and e != b"data: [DONE]"], rest


async def stream_completion(client: aiohttp.ClientSession, url: str, body: dict[str, Any],
                            headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Send one streaming completion; its TTFT, end-to-end time, gaps between text chunks and token counts.

    Tokens are counted from the final usage chunk when the server sends one, else as text chunks (one token
    each, as a server that sends one chunk per token). Events that arrive in one read arrive at one time.
    """
    start = time.perf_counter()
    arrivals: list[float] = []
    usage: dict[str, Any] = {}
    async with client.post(f"{url}/v1/completions", json={**body, "stream": True}, headers=headers or {}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {(await resp.read())[:300]!r}")
        buffer = b""
        async for data in resp.content.iter_any():
            now = time.perf_counter()
            payloads, buffer = _sse_payloads(buffer + data)
            for payload in payloads:
                chunk = json.loads(payload)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    arrivals.append(now)
    end = time.perf_counter()
    n_out = usage.get("completion_tokens") or len(arrivals)
    ttft = (arrivals[0] if arrivals else end) - start
    return {"ttft": ttft, "e2e": end - start, "tpot": (end - start - ttft) / max(1, n_out - 1),
            "itl": [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)], "completion_tokens": n_out,
            "num_chunks": len(arrivals), "prompt_tokens": usage.get("prompt_tokens", 0),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)}


async def complete(client: aiohttp.ClientSession, url: str, body: dict[str, Any],
                   headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Send one non-streaming completion: its whole reply arrives at once (TTFT = end to end), tokens from usage."""
    body = {key: value for key, value in body.items() if key != "stream_options"}
    start = time.perf_counter()
    async with client.post(f"{url}/v1/completions", json={**body, "stream": False}, headers=headers or {}) as resp:
        data = await resp.read()
    end = time.perf_counter()
    if resp.status != 200:
        raise RuntimeError(f"{url}: HTTP {resp.status}: {data[:300]!r}")
    usage = json.loads(data).get("usage") or {}
    n_out = usage.get("completion_tokens", 0)
    return {"ttft": end - start, "e2e": end - start, "tpot": (end - start) / max(1, n_out), "itl": [],
            "completion_tokens": n_out, "num_chunks": 1, "prompt_tokens": usage.get("prompt_tokens", 0),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)}


async def drive(url: str, bodies: list[dict[str, Any]], concurrency: int,
                headers: dict[str, str] | None = None, stream: bool = True) -> dict[str, Any]:
    """Send `bodies` in order with `concurrency` requests in flight (SSE streams, or whole replies with
    `stream=False`); the summary (see `summarize`)."""
    send = stream_completion if stream else complete
    results: list[dict[str, Any]] = [{}] * len(bodies)
    next_index = 0
    async with session(concurrency) as client:
        async def worker() -> None:
            nonlocal next_index
            while next_index < len(bodies):
                i = next_index
                next_index += 1
                results[i] = await send(client, url, bodies[i], headers)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summarize(results, wall)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summarize(results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Latency percentiles (ms), throughput and prefix-hit rate of a run's per-request timings."""
    ttft = [r["ttft"] for r in results]
    tpot = [r["tpot"] for r in results]
    itl = [x for r in results for x in r["itl"]]
    prompt = sum(r["prompt_tokens"] for r in results)
    cached = sum(r["cached_tokens"] for r in results)
    out = sum(r["completion_tokens"] for r in results)
    return {"num_requests": len(results), "wall_s": wall, "output_tokens": out,
            "ttft_p50_ms": 1e3 * percentile(ttft, 0.5), "ttft_p99_ms": 1e3 * percentile(ttft, 0.99),
            "tpot_p50_ms": 1e3 * percentile(tpot, 0.5), "tpot_p99_ms": 1e3 * percentile(tpot, 0.99),
            "itl_p50_ms": 1e3 * percentile(itl, 0.5), "itl_p99_ms": 1e3 * percentile(itl, 0.99),
            "output_tokens_per_s": out / wall if wall else 0.0, "requests_per_s": len(results) / wall if wall else 0.0,
            "prompt_tokens": prompt, "cached_tokens": cached, "prefix_hit_rate": cached / prompt if prompt else 0.0,
            "mean_e2e_ms": 1e3 * statistics.fmean(r["e2e"] for r in results) if results else 0.0,
            "chunks_per_request": statistics.fmean(r["num_chunks"] for r in results) if results else 0.0,
            "cached_tokens_per_request": [r["cached_tokens"] for r in results]}
