"""OpenAI requests -> prompt token ids + sampling params; engine deltas -> OpenAI responses and SSE chunks."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any

from perkunas_ray.engine.interface import SamplingParams
from perkunas_ray.errors import ConfigError
from perkunas_ray.kvserve.backend import ModelFrontend
from perkunas_ray.kvserve.errors import APIError, bad_request, context_length_exceeded
from perkunas_ray.kvserve.protocol import ChatCompletionRequest, CompletionRequest

DONE = "data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def completion_prompt(req: CompletionRequest, frontend: ModelFrontend) -> tuple[list[int], str | None]:
    """The token ids of the one prompt (and its text when given as text)."""
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise bad_request(f"batched prompts are not supported: send one prompt per request (got {len(prompt)})",
                              param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        token_ids, text = frontend.encode(prompt), prompt
    else:
        token_ids, text = list(prompt), None
    check_token_ids(token_ids, frontend, "prompt")
    return token_ids, text


def chat_prompt(req: ChatCompletionRequest, frontend: ModelFrontend) -> list[int]:
    messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                for m in req.messages]
    token_ids = frontend.encode(frontend.render_chat(messages, req.add_generation_prompt))
    check_token_ids(token_ids, frontend, "messages")
    return token_ids


def check_token_ids(token_ids: list[int], frontend: ModelFrontend, param: str) -> None:
    if not token_ids:
        raise bad_request("the prompt is empty", param=param)
    bad = [t for t in token_ids if not 0 <= t < frontend.vocab_size]
    if bad:
        raise bad_request(f"token id {bad[0]} is out of range [0, {frontend.vocab_size})", param=param)


_FIELD = re.compile(r"^sampling\.(\w+) ")


def sampling_params(req: CompletionRequest | ChatCompletionRequest, frontend: ModelFrontend, num_prompt: int,
                    max_tokens: int | None) -> dict[str, Any]:
    """Validated SamplingParams (as a dict for the wire); 400 on a bad value, naming the field."""
    limit = frontend.max_model_len
    param = "messages" if isinstance(req, ChatCompletionRequest) else "prompt"
    if num_prompt >= limit and max_tokens is None:
        raise context_length_exceeded(limit, num_prompt, 1, param)
    if max_tokens is None:
        max_tokens = limit - num_prompt
    if max_tokens < 1:
        raise bad_request(f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
    if num_prompt + max_tokens > limit:
        raise context_length_exceeded(limit, num_prompt, max_tokens, param)
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise bad_request(f"{name} is not supported (use repetition_penalty)", param=name)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    params = SamplingParams(
        max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
        top_k=0 if req.top_k in (-1, None) else req.top_k, top_p=1.0 if req.top_p is None else req.top_p,
        min_p=req.min_p, repetition_penalty=req.repetition_penalty, seed=req.seed, stop=stop,
        stop_token_ids=list(req.stop_token_ids or []), ignore_eos=req.ignore_eos, n=req.n)
    try:
        params.validate()
    except ConfigError as exc:
        match = _FIELD.match(str(exc))
        raise bad_request(str(exc).removeprefix("sampling."), param=match.group(1) if match else None) from None
    return dataclasses.asdict(params)


def usage(num_prompt: int, num_completion: int, num_cached: int) -> dict[str, Any]:
    return {"prompt_tokens": num_prompt, "completion_tokens": num_completion,
            "total_tokens": num_prompt + num_completion, "prompt_tokens_details": {"cached_tokens": num_cached}}


def finish_reason(reason: str | None) -> str | None:
    return reason


class Accumulator:
    """Collects a request's deltas: per-choice text, token counts and finish reasons, plus prompt stats."""

    def __init__(self, n: int) -> None:
        self.texts = [""] * n
        self.num_tokens = [0] * n
        self.finish_reasons: list[str | None] = [None] * n
        self.num_prompt = 0
        self.num_cached = 0

    def add(self, chunk: dict[str, Any]) -> None:
        self.num_prompt = chunk["num_prompt_tokens"]
        self.num_cached = chunk["num_cached_tokens"]
        for out in chunk["outputs"]:
            i = out["index"]
            self.texts[i] += out["delta_text"]
            self.num_tokens[i] = out["num_tokens"]
            if out["finish_reason"] is not None:
                self.finish_reasons[i] = out["finish_reason"]

    @property
    def num_completion(self) -> int:
        return sum(self.num_tokens)

    def usage(self) -> dict[str, Any]:
        return usage(self.num_prompt, self.num_completion, self.num_cached)


def completion_response(request_id: str, model: str, acc: Accumulator, echo_text: str | None) -> dict[str, Any]:
    return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "text": (echo_text or "") + text, "logprobs": None,
                         "finish_reason": finish_reason(acc.finish_reasons[i])} for i, text in enumerate(acc.texts)],
            "usage": acc.usage()}


def chat_response(request_id: str, model: str, acc: Accumulator) -> dict[str, Any]:
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason(acc.finish_reasons[i])} for i, text in enumerate(acc.texts)],
            "usage": acc.usage()}


def completion_chunk(request_id: str, model: str, created: int, index: int, text: str,
                     reason: str | None) -> dict[str, Any]:
    return {"id": request_id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason(reason)}]}


def chat_chunk(request_id: str, model: str, created: int, index: int, delta: dict[str, Any],
               reason: str | None) -> dict[str, Any]:
    return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason(reason)}]}


def usage_chunk(request_id: str, model: str, created: int, obj: str, acc: Accumulator) -> dict[str, Any]:
    return {"id": request_id, "object": obj, "created": created, "model": model, "choices": [], "usage": acc.usage()}


def ensure(cond: bool, message: str, param: str | None = None) -> None:
    if not cond:
        raise APIError(400, message, param=param)
