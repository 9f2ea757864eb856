"""Run one generation request on the backend: collect it into one response, or stream it as SSE events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from perkunas_ray.engine.interface import SamplingParams
from perkunas_ray.kvserve.admission import Admission, Slot
from perkunas_ray.kvserve.backend import ServingBackend
from perkunas_ray.kvserve.errors import APIError, internal_error, new_error_id
from perkunas_ray.kvserve.metrics import RequestMetrics
from perkunas_ray.kvserve.replies import DONE, Accumulator, Reply, sse
from perkunas_ray.kvserve.wire import OutputDelta

logger = logging.getLogger("perkunas.kvserve")


class _Timer:
    """Latency metrics of one request: time to first token, between tokens, end to end.

    Recorded on the event loop, once per streamed token. A Ray metric record lets go of the GIL, which hands it to
    the engine's torch thread when that waits for it. Queued and recorded from a thread of their own instead, the
    loop spent 7-10% less CPU per token, yet 16 streams of the speed preset ran at 1,359-1,508 tok/s against
    1,617-1,751 (four runs each, medians of 8 rounds): the engine's steps waited longer for the GIL.
    """

    def __init__(self, metrics: RequestMetrics, model: str) -> None:
        self.metrics = metrics
        self.tags = {"model": model}
        self.start = self.last = time.perf_counter()
        self.first = True

    def tick(self, delta: OutputDelta) -> None:
        if not delta.has_tokens:
            return
        now = time.perf_counter()
        if self.first:
            self.metrics.ttft.observe(now - self.start, tags=self.tags)
            self.first = False
        else:
            self.metrics.itl.observe(now - self.last, tags=self.tags)
        self.last = now

    def done(self, acc: Accumulator) -> None:
        self.metrics.e2e.observe(time.perf_counter() - self.start, tags=self.tags)
        self.metrics.generation_tokens.inc(acc.num_completion, tags=self.tags)


async def _close(deltas: AsyncIterator[Any]) -> None:
    aclose = getattr(deltas, "aclose", None)
    if aclose is not None:
        await asyncio.shield(aclose())


async def generate(backend: ServingBackend, metrics: RequestMetrics, admission: Admission, reply: Reply, req: Any,
                   token_ids: list[int], params: SamplingParams) -> Any:
    """The whole response (`req.stream` false), else a StreamingResponse of SSE events. The request holds an
    admission slot until its last byte (a stream: until its SSE generator ends)."""
    slot = admission.enter()
    try:
        return await _generate(backend, metrics, slot, reply, req, token_ids, params)
    except BaseException:
        slot.release()
        raise


async def _generate(backend: ServingBackend, metrics: RequestMetrics, slot: Slot, reply: Reply, req: Any,
                    token_ids: list[int], params: SamplingParams) -> Any:
    model = reply.model
    timer = _Timer(metrics, model)
    metrics.prompt_tokens.inc(len(token_ids), tags={"model": model})
    acc = Accumulator(params.n)
    if not req.stream:
        delta = await backend.complete(model, reply.request_id, token_ids, params)
        timer.tick(delta)
        acc.add(delta)
        timer.done(acc)
        metrics.request(reply.route, 200)
        slot.release()
        return reply.response(acc)
    deltas = backend.stream(model, reply.request_id, token_ids, params)
    # Pull the first delta before answering 200, so an engine-side refusal is still a proper error.
    try:
        first = await deltas.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await _close(deltas)
        raise
    metrics.request(reply.route, 200)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return StreamingResponse(_sse(reply, first, deltas, acc, timer, include_usage, slot),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(reply: Reply, first: OutputDelta | None, deltas: AsyncIterator[OutputDelta], acc: Accumulator,
               timer: _Timer, include_usage: bool, slot: Slot) -> AsyncIterator[str]:
    """SSE events for one request. A client that goes away cancels this generator: the engine call is
    closed (cancelled downstream), which aborts the request and frees its KV blocks."""

    def events(delta: OutputDelta) -> list[str]:
        timer.tick(delta)
        acc.add(delta)
        return [sse(chunk) for chunk in reply.chunks(delta)]

    try:
        if first is not None:
            for event in events(first):
                yield event
        async for delta in deltas:
            for event in events(delta):
                yield event
        timer.done(acc)
        if include_usage:
            yield sse(reply.usage_chunk(acc))
        yield DONE
    except APIError as exc:
        yield sse(exc.body())
        yield DONE
    except Exception as exc:  # noqa: BLE001 - e.g. the engine replica died: the client gets an ending, not a cut
        error = internal_error(new_error_id())
        logger.error("kvserve: stream %s failed (error id %s)", reply.request_id, error.headers["X-Request-Id"],
                     exc_info=exc)
        yield sse(error.body())
        yield DONE
    finally:
        slot.release()
        await _close(deltas)
