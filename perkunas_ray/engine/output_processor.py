"""Per-request output state: stop conditions, detokenised text with stop strings, streaming deltas."""

from __future__ import annotations

import dataclasses
from typing import Any

from tokenizers.decoders import DecodeStream

from perkunas_ray.engine.interface import CompletionOutput, RequestOutput, SamplingParams
from perkunas_ray.engine.request import Request, RequestStatus


@dataclasses.dataclass
class SequenceState:
    """One completion: its Request plus what the user sees (text, logprobs, what was already streamed)."""

    request: Request
    text: str = ""
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    logprobs: list[dict[int, float]] | None = None
    text_token_end: int | None = None  # output tokens that count for text (an ending EOS/stop token does not)
    num_checked_chars: int = 0  # text already searched for stop strings
    num_emitted_tokens: int = 0
    num_emitted_chars: int = 0
    decoder: DecodeStream | None = None  # incremental detokenisation while streaming or matching stop strings


@dataclasses.dataclass
class RequestState:
    """A user request: one prompt, `n` sequences, and where its outputs go."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    sequences: list[SequenceState]
    sink: Any = None  # stream(): a callable that takes each new output (engine/core.py Sink); None for generate()
    final_output: RequestOutput | None = None
    prompt_logprobs: list[dict[int, float] | None] | None = None  # with params.prompt_logprobs; [0] stays None
    prompt_logprobs_sent: bool = False

    def __post_init__(self) -> None:
        if self.params.prompt_logprobs is not None:
            self.prompt_logprobs = [None] * len(self.prompt_token_ids)

    @property
    def finished(self) -> bool:
        return all(seq.finish_reason is not None for seq in self.sequences)


class OutputProcessor:
    def __init__(self, tokenizer: Any, eos_token_id: int, max_model_len: int, bounded_length: bool = True) -> None:
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.max_model_len = max_model_len
        self.bounded_length = bounded_length  # False under sink+window pruning: only max_tokens ends it

    def detokenize(self, seq: SequenceState) -> str:
        ids = seq.request.output_token_ids[:seq.text_token_end]
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def decode_new(self, seq: SequenceState, token_id: int) -> None:
        """Append the new token's text: only it is decoded, not the whole output (DecodeStream holds back an
        unfinished UTF-8 sequence until the token that completes it)."""
        if seq.decoder is None:
            seq.decoder = DecodeStream(skip_special_tokens=True)
        chunk = seq.decoder.step(self.tokenizer, token_id)
        if chunk:
            seq.text += chunk

    def append_token(self, seq: SequenceState, token_id: int, logprobs: dict[int, float] | None,
                     incremental_text: bool) -> RequestStatus | None:
        """Record a sampled token; return the finishing status if it ends the sequence."""
        request, params = seq.request, seq.request.params
        request.append_output_token(token_id)
        if logprobs is not None:
            if seq.logprobs is None:
                seq.logprobs = []
            seq.logprobs.append(logprobs)
        status: RequestStatus | None = None
        if token_id == self.eos_token_id and not params.ignore_eos:
            status, seq.text_token_end = RequestStatus.FINISHED_STOPPED, -1
        elif token_id in params.stop_token_ids:
            status, seq.stop_reason, seq.text_token_end = RequestStatus.FINISHED_STOPPED, token_id, -1
        if params.stop and status is None:
            self.decode_new(seq, token_id)
            if self._find_stop_string(seq):
                status = RequestStatus.FINISHED_STOPPED
        if status is None and (request.num_output_tokens >= params.max_tokens
                               or (self.bounded_length and request.num_tokens >= self.max_model_len)):
            status = RequestStatus.FINISHED_LENGTH
        if status is not None:
            seq.finish_reason = status.value
            if seq.stop_reason is None or isinstance(seq.stop_reason, int):
                seq.text = self.detokenize(seq)
        elif incremental_text and not params.stop:
            self.decode_new(seq, token_id)
        return status

    def _find_stop_string(self, seq: SequenceState) -> bool:
        """Search the newly decoded text for a stop string; on a hit, truncate the text before it."""
        stops = seq.request.params.stop
        start = max(0, seq.num_checked_chars - max(len(s) for s in stops) + 1)
        hits = [(idx, s) for s in stops if (idx := seq.text.find(s, start)) >= 0]
        seq.num_checked_chars = len(seq.text)
        if not hits:
            return False
        idx, stop = min(hits)
        seq.text, seq.stop_reason = seq.text[:idx], stop
        return True

    @staticmethod
    def add_prompt_logprobs(state: RequestState, first_position: int, entries: list[dict[int, float]]) -> None:
        """Record the entries of prompt positions first_position.. (a recompute after preemption rewrites them)."""
        if state.prompt_logprobs is not None:
            state.prompt_logprobs[first_position:first_position + len(entries)] = entries

    def abort(self, seq: SequenceState) -> None:
        seq.finish_reason = RequestStatus.FINISHED_ABORTED.value
        seq.text = self.detokenize(seq)

    def make_output(self, state: RequestState) -> RequestOutput:
        """The request's state with deltas since the previous call. Cumulative fields are copies, except
        `prompt_token_ids`, the request's own list, shared by every output (it never changes)."""
        outputs = []
        for seq in state.sequences:
            token_ids = seq.request.output_token_ids  # a fresh list
            # Hold back text that may still become a stop string, or is an unfinished UTF-8 sequence.
            safe = len(seq.text)
            if seq.finish_reason is None:
                if seq.request.params.stop:
                    safe -= max(len(s) for s in seq.request.params.stop) - 1
                while safe > 0 and seq.text[safe - 1] == "\ufffd":
                    safe -= 1
            delta_text = seq.text[seq.num_emitted_chars:safe] if safe > seq.num_emitted_chars else ""
            outputs.append(CompletionOutput(
                index=seq.request.index, token_ids=token_ids, text=seq.text,
                finish_reason=seq.finish_reason,
                logprobs=list(seq.logprobs) if seq.logprobs is not None else None,
                delta_token_ids=token_ids[seq.num_emitted_tokens:], delta_text=delta_text,
                stop_reason=seq.stop_reason))
            seq.num_emitted_tokens = len(token_ids)
            seq.num_emitted_chars += len(delta_text)
        first = state.sequences[0].request
        # The prompt's log-probs are whole once the first token is sampled: they go out once, with the first output.
        prompt_logprobs = None
        if state.prompt_logprobs is not None and not state.prompt_logprobs_sent:
            prompt_logprobs, state.prompt_logprobs_sent = list(state.prompt_logprobs), True
        return RequestOutput(request_id=state.request_id, prompt_token_ids=state.prompt_token_ids,
                             num_cached_tokens=max(first.num_cached_tokens, 0), outputs=outputs,
                             finished=state.finished, prompt_logprobs=prompt_logprobs)
