"""Log-probs over HTTP: the request fields checked (400 naming the field), and the engine's entries in OpenAI's
shapes, as vLLM answers them: completions' {tokens, token_logprobs, top_logprobs, text_offset}, chat's content list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import ByteLevel

from perkunas_ray.engine.interface import SamplingParams
from perkunas_ray.kvserve.backend import ModelFrontend
from perkunas_ray.kvserve.errors import bad_request
from perkunas_ray.kvserve.protocol import ChatCompletionRequest, CompletionRequest

MAX_TOP_LOGPROBS = 20  # vLLM's default max_logprobs; OpenAI allows 20 in chat (5 in completions)
FLOOR = -9999.0  # what OpenAI and vLLM send for -inf, which JSON cannot carry

Entry = dict[int, float]  # {token_id: logprob}: the chosen token first, then the top k


def _check_top(value: int, field: str) -> None:
    if not 0 <= value <= MAX_TOP_LOGPROBS:
        raise bad_request(f"{field} must be an integer in [0, {MAX_TOP_LOGPROBS}], got {value}", param=field)


def completion_num_logprobs(req: CompletionRequest) -> int | None:
    """How many top log-probs per token a completions request wants (None: no log-probs)."""
    if req.logprobs is not None:
        _check_top(req.logprobs, "logprobs")
    return req.logprobs


def chat_num_logprobs(req: ChatCompletionRequest) -> int | None:
    """How many top log-probs per token a chat request wants (None: no log-probs)."""
    if req.top_logprobs is not None:
        _check_top(req.top_logprobs, "top_logprobs")
        if not req.logprobs:
            raise bad_request("top_logprobs needs logprobs set to true", param="top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None


def _byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> the byte it stands for (printable bytes stand for themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


BYTE_LEVEL_CHARS = _byte_level_chars()


@dataclasses.dataclass
class LogprobsFormat:
    """Writes a request's log-prob entries in OpenAI's shapes with the model's tokenizer."""

    num_top: int
    tokenizer: Tokenizer
    _texts: dict[int, str] = dataclasses.field(default_factory=dict)

    def text(self, token_id: int) -> str:
        if token_id not in self._texts:
            self._texts[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return self._texts[token_id]

    def token_bytes(self, token_id: int) -> bytes:
        """The token's own bytes: with a byte-level BPE a token may hold part of a character (its text is then
        U+FFFD), and chat's `bytes` exist so that a client can join such pieces back into the character."""
        piece = self.tokenizer.id_to_token(token_id)
        if isinstance(self.tokenizer.decoder, ByteLevel) and piece and all(c in BYTE_LEVEL_CHARS for c in piece):
            return bytes(BYTE_LEVEL_CHARS[c] for c in piece)
        return self.text(token_id).encode("utf-8")

    def completion(self, token_ids: Sequence[int], entries: Sequence[Entry | None],
                   text_offset: int = 0) -> dict[str, Any]:
        """The completions `logprobs` object; an entry of None (the first prompt token) gives nulls.

        text_offset counts characters of the token texts from `text_offset` (vLLM's rule), so a stream's chunks
        continue where the previous one ended.
        """
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        for token_id, entry in zip(token_ids, entries, strict=True):
            text = self.text(token_id)
            tokens.append(text)
            offsets.append(text_offset)
            text_offset += len(text)
            if entry is None:
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            token_logprobs.append(max(entry[token_id], FLOOR))
            top: dict[str, float] = {}
            for top_id, logprob in entry.items():  # distinct ids may share a text: the first (the chosen) wins
                top.setdefault(self.text(top_id), max(logprob, FLOOR))
            top_logprobs.append(top)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                "text_offset": offsets}

    def chat(self, token_ids: Sequence[int], entries: Sequence[Entry]) -> dict[str, Any]:
        """The chat `logprobs` object: per token {token, logprob, bytes, top_logprobs: the num_top most likely}."""
        content = []
        for token_id, entry in zip(token_ids, entries, strict=True):
            ranked = sorted(entry.items(), key=lambda item: item[1], reverse=True)[:self.num_top]
            content.append({**self._chat_token(token_id, entry[token_id]),
                            "top_logprobs": [self._chat_token(t, lp) for t, lp in ranked]})
        return {"content": content}

    def _chat_token(self, token_id: int, logprob: float) -> dict[str, Any]:
        return {"token": self.text(token_id), "logprob": max(logprob, FLOOR), "bytes": list(self.token_bytes(token_id))}


def logprobs_format(num_top: int | None, frontend: ModelFrontend) -> LogprobsFormat | None:
    return None if num_top is None else LogprobsFormat(num_top, frontend.tokenizer)


def with_logprobs(params: SamplingParams, num_top: int | None, prompt: bool = False) -> SamplingParams:
    """`params` asking the engine for log-probs of the sampled tokens (and of the prompt's, for `echo`)."""
    if num_top is None:
        return params
    return dataclasses.replace(params, logprobs=num_top, prompt_logprobs=num_top if prompt else None)
