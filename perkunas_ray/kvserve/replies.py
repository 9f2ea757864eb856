"""Engine deltas -> OpenAI replies: a whole response, or SSE chunks, for text completions and for chat."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from perkunas_ray.kvserve.wire import ChoiceDelta, OutputDelta

DONE = "data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def usage(num_prompt: int, num_completion: int, num_cached: int) -> dict[str, Any]:
    return {"prompt_tokens": num_prompt, "completion_tokens": num_completion,
            "total_tokens": num_prompt + num_completion, "prompt_tokens_details": {"cached_tokens": num_cached}}


class Accumulator:
    """Collects a request's deltas: per-choice text, token counts and finish reasons, plus prompt stats."""

    def __init__(self, n: int) -> None:
        self.texts = [""] * n
        self.num_tokens = [0] * n
        self.finish_reasons: list[str | None] = [None] * n
        self.num_prompt = 0
        self.num_cached = 0

    def add(self, delta: OutputDelta) -> None:
        self.num_prompt = delta.num_prompt_tokens
        self.num_cached = delta.num_cached_tokens
        for choice in delta.choices:
            i = choice.index
            self.texts[i] += choice.text
            self.num_tokens[i] = choice.num_tokens
            if choice.finish_reason is not None:
                self.finish_reasons[i] = choice.finish_reason

    @property
    def num_completion(self) -> int:
        return sum(self.num_tokens)

    def usage(self) -> dict[str, Any]:
        return usage(self.num_prompt, self.num_completion, self.num_cached)


class Reply:
    """One request's reply; subclasses say how a choice looks whole (`choice`) and streamed (`choice_chunks`)."""

    route: str
    id_prefix: str
    response_object: str
    chunk_object: str

    def __init__(self, model: str, n: int) -> None:
        self.request_id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.model = model
        self.created = int(time.time())
        self.started = [False] * n  # per choice: has its first chunk gone out?

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.request_id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices}

    def response(self, acc: Accumulator) -> dict[str, Any]:
        choices = [self.choice(i, text, acc.finish_reasons[i]) for i, text in enumerate(acc.texts)]
        return {**self._envelope(self.response_object, choices), "usage": acc.usage()}

    def chunks(self, delta: OutputDelta) -> list[dict[str, Any]]:
        """The SSE payloads for one engine delta."""
        out = []
        for choice in delta.choices:
            first = not self.started[choice.index]
            self.started[choice.index] = True
            out.extend(self._envelope(self.chunk_object, [c]) for c in self.choice_chunks(choice, first))
        return out

    def usage_chunk(self, acc: Accumulator) -> dict[str, Any]:
        return {**self._envelope(self.chunk_object, []), "usage": acc.usage()}

    def choice(self, index: int, text: str, reason: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def choice_chunks(self, choice: ChoiceDelta, first: bool) -> list[dict[str, Any]]:
        raise NotImplementedError


class CompletionReply(Reply):
    route = "/v1/completions"
    id_prefix = "cmpl"
    response_object = chunk_object = "text_completion"

    def __init__(self, model: str, n: int, echo: str | None) -> None:
        super().__init__(model, n)
        self.echo = echo or ""

    def choice(self, index: int, text: str, reason: str | None) -> dict[str, Any]:
        return {"index": index, "text": self.echo + text, "logprobs": None, "finish_reason": reason}

    def choice_chunks(self, choice: ChoiceDelta, first: bool) -> list[dict[str, Any]]:
        text = self.echo + choice.text if first else choice.text
        if not text and choice.finish_reason is None:
            return []
        return [{"index": choice.index, "text": text, "logprobs": None, "finish_reason": choice.finish_reason}]


class ChatReply(Reply):
    route = "/v1/chat/completions"
    id_prefix = "chatcmpl"
    response_object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def choice(self, index: int, text: str, reason: str | None) -> dict[str, Any]:
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": reason}

    def choice_chunks(self, choice: ChoiceDelta, first: bool) -> list[dict[str, Any]]:
        out = []
        if first:
            out.append(self._delta(choice.index, {"role": "assistant", "content": ""}, None))
        if choice.text or choice.finish_reason is not None:
            out.append(self._delta(choice.index, {"content": choice.text} if choice.text else {},
                                   choice.finish_reason))
        return out

    @staticmethod
    def _delta(index: int, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
