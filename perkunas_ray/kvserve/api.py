"""The OpenAI-compatible FastAPI app: auth, body limits, validation, completions / chat (SSE), tokenize.

Every error leaves in OpenAI's schema `{"error": {"message", "type", "param", "code"}}`; bad input is a
4xx, never a 500. Routes read and parse the body themselves, so size limits, malformed JSON and type
errors are all 400/413 decisions made here (FastAPI's 422 handler is overridden too, for the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from perkunas_ray.errors import PerkunasError
from perkunas_ray.kvserve import convert
from perkunas_ray.kvserve.auth import TokenAuth
from perkunas_ray.kvserve.backend import Backend
from perkunas_ray.kvserve.errors import APIError, error_body, payload_too_large, unauthorized
from perkunas_ray.kvserve.metrics import RequestMetrics
from perkunas_ray.kvserve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)

logger = logging.getLogger("perkunas.kvserve")


def _validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = loc[0] if loc else None
    where = ".".join(loc) or "body"
    return f"{where}: {first.get('msg', 'invalid value')}", param


async def read_json(request: Request, max_body_bytes: int) -> Any:
    """The body as JSON: 413 past the limit (declared or actual), 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_body_bytes:
                raise payload_too_large(max_body_bytes)
        except ValueError:
            raise APIError(400, "invalid Content-Length header") from None
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_body_bytes:
            raise payload_too_large(max_body_bytes)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise APIError(400, "the request body is empty; expected a JSON object")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def parse(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = _validation_message(exc)
        raise APIError(400, message, param=param) from None


def create_app(backend: Backend, auth: TokenAuth, *, max_body_bytes: int = 1 << 20,
               metrics: RequestMetrics | None = None) -> FastAPI:
    metrics = metrics or RequestMetrics(enabled=False)
    app = FastAPI(title="perkunas kvserve", docs_url=None, redoc_url=None, openapi_url=None)
    logger.info("kvserve: %s", auth.describe())
    app.state.backend = backend

    def record(route: str, status: int) -> None:
        metrics.request(route, status)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        record(request.url.path, exc.status_code)
        return JSONResponse(exc.body(), status_code=exc.status_code)

    @app.exception_handler(PerkunasError)
    async def _user_error(request: Request, exc: PerkunasError) -> JSONResponse:
        record(request.url.path, 400)
        return JSONResponse(error_body(str(exc)), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        record(request.url.path, 400)
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        record(request.url.path, exc.status_code)
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("kvserve: internal error on %s", request.url.path)
        record(request.url.path, 500)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "internal_error"),
                            status_code=500)

    def authorize(request: Request) -> None:
        if auth.check(request.headers.get("authorization")) is None:
            raise unauthorized()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        authorize(request)
        for model_id in backend.model_ids():
            with contextlib.suppress(Exception):  # a model whose engine is not up yet still gets listed
                await asyncio.wait_for(backend.frontend(model_id), timeout=5)
        record("/v1/models", 200)
        return {"object": "list", "data": [backend.model_card(m) for m in backend.model_ids()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        authorize(request)
        card = backend.model_card(model_id)
        record("/v1/models/{id}", 200)
        return card

    @app.get("/kvserve/stats")
    async def engine_stats(request: Request, model: str | None = None) -> dict[str, Any]:
        """One engine replica's stats (KV blocks, prefix cache, aborted requests) for `model`."""
        authorize(request)
        model = model or backend.model_ids()[0]
        await backend.frontend(model)
        return await backend.stats(model)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        authorize(request)
        req = parse(TokenizeRequest, await read_json(request, max_body_bytes))
        frontend = await backend.frontend(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give exactly one of prompt or messages", param="prompt")
        if req.prompt is not None:
            tokens = frontend.encode(req.prompt)
        else:
            messages = [{"role": m.role, "content": m.text()} for m in req.messages or []]
            tokens = frontend.encode(frontend.render_chat(messages, req.add_generation_prompt))
        record("/tokenize", 200)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": frontend.max_model_len}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        authorize(request)
        req = parse(DetokenizeRequest, await read_json(request, max_body_bytes))
        frontend = await backend.frontend(req.model)
        if req.tokens:
            convert.check_token_ids(req.tokens, frontend, "tokens")
        record("/detokenize", 200)
        return {"prompt": frontend.decode(req.tokens)}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        authorize(request)
        req = parse(CompletionRequest, await read_json(request, max_body_bytes))
        frontend = await backend.frontend(req.model)
        if req.logprobs is not None:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        token_ids, text = convert.completion_prompt(req, frontend)
        params = convert.sampling_params(req, frontend, len(token_ids), req.max_tokens)
        echo = text if req.echo and text is not None else (frontend.decode(token_ids) if req.echo else None)
        return await run_request("/v1/completions", "cmpl", req, frontend.model_id, token_ids, params, echo)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        authorize(request)
        req = parse(ChatCompletionRequest, await read_json(request, max_body_bytes))
        frontend = await backend.frontend(req.model)
        if req.logprobs or req.top_logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        token_ids = convert.chat_prompt(req, frontend)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        params = convert.sampling_params(req, frontend, len(token_ids), max_tokens)
        return await run_request("/v1/chat/completions", "chatcmpl", req, frontend.model_id, token_ids, params,
                                 None)

    async def run_request(route: str, prefix: str, req: Any, model: str, token_ids: list[int],
                          params: dict[str, Any], echo: str | None) -> Any:
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        is_chat = prefix == "chatcmpl"
        timer = _Timer(metrics, model)
        metrics.prompt_tokens.inc(len(token_ids), tags={"model": model})
        if not req.stream:
            acc = convert.Accumulator(req.n)
            chunks = backend.stream(model, request_id, token_ids, params)
            try:
                async for chunk in chunks:
                    timer.tick(chunk)
                    acc.add(chunk)
            finally:
                await _close(chunks)
            timer.done(acc)
            record(route, 200)
            if is_chat:
                return convert.chat_response(request_id, model, acc)
            return convert.completion_response(request_id, model, acc, echo)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        chunks = backend.stream(model, request_id, token_ids, params)
        # Pull the first chunk before answering 200, so an engine-side refusal is still a proper error.
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException:
            await _close(chunks)
            raise
        record(route, 200)
        return StreamingResponse(
            _sse(request_id, model, is_chat, req.n, first, chunks, include_usage, echo, timer),
            media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


class _Timer:
    def __init__(self, metrics: RequestMetrics, model: str) -> None:
        self.metrics = metrics
        self.tags = {"model": model}
        self.start = self.last = time.perf_counter()
        self.first = True

    def tick(self, chunk: dict[str, Any]) -> None:
        if not any(o["delta_token_ids"] for o in chunk["outputs"]):
            return
        now = time.perf_counter()
        if self.first:
            self.metrics.ttft.observe(now - self.start, tags=self.tags)
            self.first = False
        else:
            self.metrics.itl.observe(now - self.last, tags=self.tags)
        self.last = now

    def done(self, acc: convert.Accumulator) -> None:
        self.metrics.e2e.observe(time.perf_counter() - self.start, tags=self.tags)
        self.metrics.generation_tokens.inc(acc.num_completion, tags=self.tags)


async def _close(chunks: AsyncIterator[Any]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await asyncio.shield(aclose())


async def _sse(request_id: str, model: str, is_chat: bool, n: int, first: dict[str, Any] | None,
               chunks: AsyncIterator[dict[str, Any]], include_usage: bool, echo: str | None,
               timer: _Timer) -> AsyncIterator[str]:
    """SSE events for one request. A client that goes away cancels this generator: the engine call is
    closed (cancelled downstream), which aborts the request and frees its KV blocks."""
    created = int(time.time())
    acc = convert.Accumulator(n)
    started = [False] * n
    obj = "chat.completion.chunk" if is_chat else "text_completion"

    def events(chunk: dict[str, Any]) -> list[str]:
        timer.tick(chunk)
        acc.add(chunk)
        out = []
        for o in chunk["outputs"]:
            i, text, reason = o["index"], o["delta_text"], o["finish_reason"]
            if is_chat:
                if not started[i]:
                    started[i] = True
                    out.append(convert.sse(convert.chat_chunk(request_id, model, created, i,
                                                              {"role": "assistant", "content": ""}, None)))
                if text or reason is not None:
                    delta = {"content": text} if text else {}
                    out.append(convert.sse(convert.chat_chunk(request_id, model, created, i, delta, reason)))
            else:
                if not started[i]:
                    started[i] = True
                    text = (echo or "") + text
                if text or reason is not None:
                    out.append(convert.sse(convert.completion_chunk(request_id, model, created, i, text, reason)))
        return out

    try:
        if first is not None:
            for event in events(first):
                yield event
        async for chunk in chunks:
            for event in events(chunk):
                yield event
        timer.done(acc)
        if include_usage:
            yield convert.sse(convert.usage_chunk(request_id, model, created, obj, acc))
        yield convert.DONE
    except APIError as exc:
        yield convert.sse(exc.body())
        yield convert.DONE
    finally:
        await _close(chunks)
