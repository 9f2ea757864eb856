"""Engine deltas -> OpenAI replies: a whole response, or SSE chunks, for text completions and for chat."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any

from perkunas_ray.kvserve.logprobs import Entry, LogprobsFormat
from perkunas_ray.kvserve.wire import ChoiceDelta, OutputDelta

DONE = "data: [DONE]\n\n"
# One encoder for every event: json.dumps with a non-default argument builds a new JSONEncoder per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def sse(data: dict[str, Any]) -> str:
    return f"data: {_COMPACT.encode(data)}\n\n"


def usage(num_prompt: int, num_completion: int, num_cached: int) -> dict[str, Any]:
    return {"prompt_tokens": num_prompt, "completion_tokens": num_completion,
            "total_tokens": num_prompt + num_completion, "prompt_tokens_details": {"cached_tokens": num_cached}}


class Accumulator:
    """Collects a request's deltas: per-choice text, tokens, log-probs and finish reasons, plus prompt stats."""

    def __init__(self, n: int) -> None:
        self.texts = [""] * n
        self.token_ids: list[list[int]] = [[] for _ in range(n)]
        self.logprobs: list[list[Entry]] = [[] for _ in range(n)]
        self.num_tokens = [0] * n
        self.finish_reasons: list[str | None] = [None] * n
        self.num_prompt = 0
        self.num_cached = 0
        self.prompt_logprobs: list[Entry | None] | None = None

    def add(self, delta: OutputDelta) -> None:
        self.num_prompt = delta.num_prompt_tokens
        self.num_cached = delta.num_cached_tokens
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs = delta.prompt_logprobs
        for choice in delta.choices:
            i = choice.index
            self.texts[i] += choice.text
            self.token_ids[i] += choice.token_ids
            self.logprobs[i] += choice.logprobs or []
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
        choices = [self.choice(i, acc) for i in range(len(acc.texts))]
        return {**self._envelope(self.response_object, choices), "usage": acc.usage()}

    def chunks(self, delta: OutputDelta) -> list[dict[str, Any]]:
        """The SSE payloads for one engine delta."""
        out = []
        for choice in delta.choices:
            first = not self.started[choice.index]
            self.started[choice.index] = True
            out.extend(self._envelope(self.chunk_object, [c]) for c in self.choice_chunks(choice, first, delta))
        return out

    def usage_chunk(self, acc: Accumulator) -> dict[str, Any]:
        return {**self._envelope(self.chunk_object, []), "usage": acc.usage()}

    def choice(self, index: int, acc: Accumulator) -> dict[str, Any]:
        raise NotImplementedError

    def choice_chunks(self, choice: ChoiceDelta, first: bool, delta: OutputDelta) -> list[dict[str, Any]]:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Echo:
    """The prompt a completions reply repeats before its text (`echo`), and whether it is all of the reply
    (`max_tokens` 0: the prompt alone, scored, as vLLM answers it)."""

    text: str
    token_ids: list[int]
    only: bool = False


class CompletionReply(Reply):
    route = "/v1/completions"
    id_prefix = "cmpl"
    response_object = chunk_object = "text_completion"

    def __init__(self, model: str, n: int, echo: Echo | None, logprobs: LogprobsFormat | None = None) -> None:
        super().__init__(model, n)
        self.echo = echo
        self.logprobs = logprobs
        self.text_offsets = [0] * n  # per choice: characters of token texts already sent (stream)

    def choice(self, index: int, acc: Accumulator) -> dict[str, Any]:
        return self._choice(index, acc.texts[index], acc.token_ids[index], acc.logprobs[index], acc.prompt_logprobs,
                            True, acc.finish_reasons[index])

    def choice_chunks(self, choice: ChoiceDelta, first: bool, delta: OutputDelta) -> list[dict[str, Any]]:
        body = self._choice(choice.index, choice.text, choice.token_ids, choice.logprobs or [], delta.prompt_logprobs,
                            first, choice.finish_reason)
        if not body["text"] and not (body["logprobs"] and body["logprobs"]["tokens"]) and body["finish_reason"] is None:
            return []
        return [body]

    def _choice(self, index: int, text: str, token_ids: list[int], entries: list[Entry],
                prompt_entries: list[Entry | None] | None, with_echo: bool, reason: str | None) -> dict[str, Any]:
        """One choice (whole, or a stream chunk): the echoed prompt first when `with_echo`."""
        echo = self.echo if with_echo else None
        if self.echo is not None and self.echo.only:
            text, token_ids, entries = "", [], []
        logprobs = None
        if self.logprobs is not None:
            if echo is not None:
                token_ids = echo.token_ids + token_ids
                entries = list(prompt_entries or [None] * len(echo.token_ids)) + entries
            logprobs = self.logprobs.completion(token_ids, entries, self.text_offsets[index])
            self.text_offsets[index] += sum(len(t) for t in logprobs["tokens"])
        return {"index": index, "text": (echo.text if echo else "") + text, "logprobs": logprobs,
                "finish_reason": reason}


class ChatReply(Reply):
    route = "/v1/chat/completions"
    id_prefix = "chatcmpl"
    response_object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def __init__(self, model: str, n: int, logprobs: LogprobsFormat | None = None) -> None:
        super().__init__(model, n)
        self.logprobs = logprobs

    def choice(self, index: int, acc: Accumulator) -> dict[str, Any]:
        return {"index": index, "message": {"role": "assistant", "content": acc.texts[index]},
                "logprobs": self._logprobs(acc.token_ids[index], acc.logprobs[index]),
                "finish_reason": acc.finish_reasons[index]}

    def choice_chunks(self, choice: ChoiceDelta, first: bool, delta: OutputDelta) -> list[dict[str, Any]]:
        out = []
        if first:
            out.append(self._delta(choice.index, {"role": "assistant", "content": ""}, None, None))
        # Tokens whose text is held back (a possible stop string) still send their log-probs.
        if choice.text or choice.finish_reason is not None or (self.logprobs is not None and choice.token_ids):
            out.append(self._delta(choice.index, {"content": choice.text} if choice.text else {},
                                   self._logprobs(choice.token_ids, choice.logprobs or []), choice.finish_reason))
        return out

    def _logprobs(self, token_ids: list[int], entries: list[Entry]) -> dict[str, Any] | None:
        return None if self.logprobs is None else self.logprobs.chat(token_ids, entries)

    @staticmethod
    def _delta(index: int, delta: dict[str, Any], logprobs: dict[str, Any] | None,
               reason: str | None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
