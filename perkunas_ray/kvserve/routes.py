"""The OpenAI-compatible routes: models, completions, chat completions, tokenize, engine stats.

Every route here needs a bearer token (the `authorized` dependency, applied to the whole router);
`/health` is on the app itself and stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import APIKeyHeader

from perkunas_ray.kvserve import convert
from perkunas_ray.kvserve.admission import Admission
from perkunas_ray.kvserve.auth import TokenAuth
from perkunas_ray.kvserve.backend import ServingBackend
from perkunas_ray.kvserve.body import parse, read_json
from perkunas_ray.kvserve.errors import APIError, unauthorized
from perkunas_ray.kvserve.generation import generate
from perkunas_ray.kvserve.logprobs import (
    chat_num_logprobs,
    completion_num_logprobs,
    logprobs_format,
    with_logprobs,
)
from perkunas_ray.kvserve.metrics import RequestMetrics
from perkunas_ray.kvserve.openapi import request_body
from perkunas_ray.kvserve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from perkunas_ray.kvserve.rate_limit import RateLimit
from perkunas_ray.kvserve.replies import ChatReply, CompletionReply, Echo
from perkunas_ray.kvserve.unsupported import check_supported


@dataclasses.dataclass
class AppState:
    """What the routes share, kept on `app.state.kvserve`."""

    backend: ServingBackend
    auth: TokenAuth
    metrics: RequestMetrics
    max_body_bytes: int
    rate_limiter: RateLimit
    admission: Admission


async def app_state(request: Request) -> AppState:
    # async: FastAPI runs a plain `def` dependency on its thread pool, a thread hop per request for an attribute read
    return request.app.state.kvserve


State = Annotated[AppState, Depends(app_state)]
authorization_header = APIKeyHeader(name="Authorization", auto_error=False)


async def authorized(state: State, authorization: Annotated[str | None, Security(authorization_header)]) -> str:
    """The name of the caller's token; 401 when it is missing or unknown, 429 past its rate limit."""
    name = state.auth.check(authorization)
    if name is None:
        raise unauthorized()
    await state.rate_limiter.acquire(name)
    return name


async def json_body(request: Request, state: State) -> dict[str, Any]:
    return await read_json(request, state.max_body_bytes, state.backend.registry.limits.max_json_depth)


JSONBody = Annotated[dict[str, Any], Depends(json_body)]
router = APIRouter(dependencies=[Depends(authorized)])


@router.get("/v1/models")
async def list_models(state: State) -> dict[str, Any]:
    backend = state.backend
    for model_id in backend.model_ids():
        with contextlib.suppress(Exception):  # a model whose engine is not up yet still gets listed
            await asyncio.wait_for(backend.refresh(model_id), timeout=5)
    state.metrics.request("/v1/models", 200)
    return {"object": "list", "data": [backend.model_card(m) for m in backend.model_ids()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, state: State) -> dict[str, Any]:
    with contextlib.suppress(Exception):  # the card (or its 404) comes from the registry even if this fails
        await asyncio.wait_for(state.backend.refresh(model_id), timeout=5)
    card = state.backend.model_card(model_id)
    state.metrics.request("/v1/models/{model_id}", 200)
    return card


@router.get("/kvserve/stats")
async def engine_stats(state: State, model: str | None = None) -> dict[str, Any]:
    """One engine replica's stats (KV blocks, prefix cache, aborted requests) for `model`."""
    model = model or state.backend.model_ids()[0]
    await state.backend.frontend(model)
    return await state.backend.stats(model)


@router.post("/tokenize", openapi_extra=request_body(TokenizeRequest))
async def tokenize(body: JSONBody, state: State) -> dict[str, Any]:
    req = parse(TokenizeRequest, body)
    frontend = await state.backend.frontend(req.model)
    if (req.prompt is None) == (req.messages is None):
        raise APIError(400, "give exactly one of prompt or messages", param="prompt")
    if req.prompt is not None:
        tokens = frontend.encode(req.prompt)
    else:
        tokens = frontend.encode_chat(convert.chat_messages(req.messages or []), req.add_generation_prompt)
    state.metrics.request("/tokenize", 200)
    return {"tokens": tokens, "count": len(tokens), "max_model_len": frontend.max_model_len}


@router.post("/detokenize", openapi_extra=request_body(DetokenizeRequest))
async def detokenize(body: JSONBody, state: State) -> dict[str, Any]:
    req = parse(DetokenizeRequest, body)
    frontend = await state.backend.frontend(req.model)
    if req.tokens:
        convert.check_token_ids(req.tokens, frontend, "tokens")
    state.metrics.request("/detokenize", 200)
    return {"prompt": frontend.decode(req.tokens)}


@router.post("/v1/completions", openapi_extra=request_body(CompletionRequest))
async def completions(body: JSONBody, state: State) -> Any:
    check_supported(body)
    req = parse(CompletionRequest, body)
    frontend = await state.backend.frontend(req.model)
    num_logprobs = completion_num_logprobs(req)
    token_ids, text = convert.completion_prompt(req, frontend)
    echo_only = req.echo and req.max_tokens == 0  # the prompt alone, scored (vLLM generates one token, unshown)
    params = convert.sampling_params(req, frontend, len(token_ids), 1 if echo_only else req.max_tokens,
                                     state.backend.registry.limits)
    params = with_logprobs(params, num_logprobs, prompt=req.echo)
    echo = Echo(text if text is not None else frontend.decode(token_ids), token_ids, echo_only) if req.echo else None
    reply = CompletionReply(frontend.model_id, req.n, echo, logprobs_format(num_logprobs, frontend))
    return await generate(state.backend, state.metrics, state.admission, reply, req, token_ids, params)


@router.post("/v1/chat/completions", openapi_extra=request_body(ChatCompletionRequest))
async def chat_completions(body: JSONBody, state: State) -> Any:
    check_supported(body)
    req = parse(ChatCompletionRequest, body)
    frontend = await state.backend.frontend(req.model)
    num_logprobs = chat_num_logprobs(req)
    token_ids = convert.chat_prompt(req, frontend)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    params = convert.sampling_params(req, frontend, len(token_ids), max_tokens, state.backend.registry.limits)
    params = with_logprobs(params, num_logprobs)
    reply = ChatReply(frontend.model_id, req.n, logprobs_format(num_logprobs, frontend))
    return await generate(state.backend, state.metrics, state.admission, reply, req, token_ids, params)
