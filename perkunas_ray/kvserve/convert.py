"""OpenAI requests -> prompt token ids + SamplingParams: the one place request values are checked (400 if bad)."""

from __future__ import annotations

import re
from typing import Any

from perkunas_ray.engine.interface import SamplingParams
from perkunas_ray.errors import ConfigError
from perkunas_ray.kvserve.backend import ModelFrontend
from perkunas_ray.kvserve.errors import bad_request, context_length_exceeded
from perkunas_ray.kvserve.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest
from perkunas_ray.kvserve.registry import RequestLimits


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


def chat_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the chat template reads them."""
    return [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in messages]


def chat_prompt(req: ChatCompletionRequest, frontend: ModelFrontend) -> list[int]:
    token_ids = frontend.encode_chat(chat_messages(req.messages), req.add_generation_prompt)
    check_token_ids(token_ids, frontend, "messages")
    return token_ids


def check_token_ids(token_ids: list[int], frontend: ModelFrontend, param: str) -> None:
    if not token_ids:
        raise bad_request("the prompt is empty", param=param)
    bad = [t for t in token_ids if not 0 <= t < frontend.vocab_size]
    if bad:
        raise bad_request(f"token id {bad[0]} is out of range [0, {frontend.vocab_size})", param=param)


def check_limits(req: CompletionRequest | ChatCompletionRequest, stop: list[str], max_tokens: int,
                 limits: RequestLimits) -> None:
    """The registry's bounds on one request (what it may cost the engine); 400 naming the limit."""
    def over(value: int, limit: int, what: str, param: str, name: str) -> None:
        if value > limit:
            raise bad_request(f"{what} is {value}; this server allows at most {limit} (limits.{name})", param=param,
                              code="limit_exceeded")

    over(req.n, limits.max_n, "n", "n", "max_n")
    over(len(stop), limits.max_stop, "the number of stop strings", "stop", "max_stop")
    over(max((len(s) for s in stop), default=0), limits.max_stop_chars, "the longest stop string's length", "stop",
         "max_stop_chars")
    over(len(req.stop_token_ids or []), limits.max_stop_token_ids, "the number of stop_token_ids", "stop_token_ids",
         "max_stop_token_ids")
    over(req.n * max_tokens, limits.max_total_tokens, "n x max_tokens", "max_tokens", "max_total_tokens")


_FIELD = re.compile(r"^sampling\.(\w+) ")


def sampling_params(req: CompletionRequest | ChatCompletionRequest, frontend: ModelFrontend, num_prompt: int,
                    max_tokens: int | None, limits: RequestLimits) -> SamplingParams:
    """The request's SamplingParams (checked as they are made); 400 on a bad value, naming the field."""
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
    check_limits(req, stop, max_tokens, limits)
    try:
        return SamplingParams(
            max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
            top_k=0 if req.top_k in (-1, None) else req.top_k, top_p=1.0 if req.top_p is None else req.top_p,
            min_p=req.min_p, repetition_penalty=req.repetition_penalty, seed=req.seed, stop=stop,
            stop_token_ids=list(req.stop_token_ids or []) + (frontend.end_of_turn_ids if param == "messages" else []),
            ignore_eos=req.ignore_eos, n=req.n)
    except ConfigError as exc:
        match = _FIELD.match(str(exc))
        raise bad_request(str(exc).removeprefix("sampling."), param=match.group(1) if match else None) from None
