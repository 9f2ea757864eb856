"""What crosses the wire between the ingress and an engine replica: typed objects, checked once at the edge.

In: a prompt's token ids and a `SamplingParams` (valid by construction). Out: a `ModelInfo` once per
model (what the ingress needs to tokenize and check requests), then an `OutputDelta` per engine step.
"""

from __future__ import annotations

import dataclasses

from perkunas_ray.engine.interface import RequestOutput


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """One served model as the ingress sees it: its tokenizer, context limit, chat template and checkpoint step."""

    model_id: str
    max_model_len: int
    vocab_size: int
    chat_template: str
    tokenizer_json: str
    step: int | None = None  # the run's checkpoint step being served; None: a Hugging Face package


@dataclasses.dataclass(frozen=True)
class ChoiceDelta:
    """What one of a request's `n` completions produced since the previous delta."""

    index: int
    token_ids: list[int]
    text: str
    num_tokens: int  # generated so far, this delta included
    finish_reason: str | None  # None while running; then stop | length | abort
    logprobs: list[dict[int, float]] | None = None  # per token of `token_ids`, with SamplingParams.logprobs


@dataclasses.dataclass(frozen=True)
class OutputDelta:
    """One engine step of one request, with the counts its usage report needs."""

    request_id: str
    choices: list[ChoiceDelta]
    num_prompt_tokens: int
    num_cached_tokens: int
    finished: bool
    prompt_logprobs: list[dict[int, float] | None] | None = None  # in the first delta, when asked for

    @classmethod
    def from_output(cls, out: RequestOutput) -> OutputDelta:
        choices = [ChoiceDelta(c.index, list(c.delta_token_ids), c.delta_text, len(c.token_ids), c.finish_reason,
                               None if c.logprobs is None else c.logprobs[len(c.token_ids) - len(c.delta_token_ids):])
                   for c in out.outputs]
        return cls(out.request_id, choices, len(out.prompt_token_ids), int(out.num_cached_tokens), out.finished,
                   out.prompt_logprobs)

    @property
    def has_tokens(self) -> bool:
        return any(c.token_ids for c in self.choices)
