"""The engine's public types: sampling params, KV policy, outputs, stats, KV events and the Engine protocol.

Streaming shape: `Engine.stream` yields `RequestOutput`s whose `CompletionOutput`s carry both the
cumulative `token_ids`/`text` and the `delta_token_ids`/`delta_text` produced since the previous
yield. The last yield has `finished=True` and every output a `finish_reason`. `generate` returns one
finished `RequestOutput` per prompt (deltas there equal the whole output).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from perkunas_ray.config import check, is_int
from perkunas_ray.errors import ConfigError

KV_DTYPES = ("model", "int8")
PRUNING_MODES = ("none", "sink_window")
FINISH_REASONS = ("stop", "length", "abort")
KV_EVENT_KINDS = ("stored", "removed", "cleared")
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 63) - 1  # OpenAI's seed is an int64


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RequestFailedError(RuntimeError):
    """One request failed inside the engine (a server fault, not the caller's); the engine serves on."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops (OpenAI / vLLM names).

    Checked once, when made (frozen, so it stays valid): whoever receives one, across the serving wire
    included, need not check it again.
    """

    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = dataclasses.field(default_factory=list)
    stop_token_ids: list[int] = dataclasses.field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None = off; k >= 0 = the sampled token's logprob plus the top k
    prompt_logprobs: int | None = None  # None = off; k >= 0 = each prompt token's logprob plus the top k
    n: int = 1
    # A stream of this request yields only its finished output (vLLM's RequestOutputKind.FINAL_ONLY): a whole reply
    # then costs no output, text decode or event-loop wake-up per step.
    final_only: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = "sampling") -> SamplingParams:
        check(is_int(self.max_tokens) and self.max_tokens > 0, f"{prefix}.max_tokens", "a positive integer",
              self.max_tokens)
        check(_is_finite(self.temperature) and self.temperature >= 0, f"{prefix}.temperature",
              "a finite number >= 0", self.temperature)
        check(is_int(self.top_k) and self.top_k >= 0, f"{prefix}.top_k", "an integer >= 0 (0 disables it)",
              self.top_k)
        check(_is_finite(self.top_p) and 0 < self.top_p <= 1, f"{prefix}.top_p", "in (0, 1]", self.top_p)
        check(_is_finite(self.min_p) and 0 <= self.min_p <= 1, f"{prefix}.min_p", "in [0, 1]", self.min_p)
        check(_is_finite(self.repetition_penalty) and self.repetition_penalty > 0,
              f"{prefix}.repetition_penalty", "a finite number > 0", self.repetition_penalty)
        check(self.seed is None or (is_int(self.seed) and SEED_MIN <= self.seed <= SEED_MAX), f"{prefix}.seed",
              f"None or an integer in [{SEED_MIN}, {SEED_MAX}] (64 bits)", self.seed)
        check(isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop), f"{prefix}.stop",
              "a list of non-empty strings", self.stop)
        check(isinstance(self.stop_token_ids, list) and all(is_int(t) and t >= 0 for t in self.stop_token_ids),
              f"{prefix}.stop_token_ids", "a list of token ids >= 0", self.stop_token_ids)
        check(isinstance(self.ignore_eos, bool), f"{prefix}.ignore_eos", "true or false", self.ignore_eos)
        check(self.logprobs is None or (is_int(self.logprobs) and 0 <= self.logprobs <= 20), f"{prefix}.logprobs",
              "None or an integer in [0, 20]", self.logprobs)
        check(self.prompt_logprobs is None or (is_int(self.prompt_logprobs) and 0 <= self.prompt_logprobs <= 20),
              f"{prefix}.prompt_logprobs", "None or an integer in [0, 20]", self.prompt_logprobs)
        check(is_int(self.n) and self.n >= 1, f"{prefix}.n", "an integer >= 1", self.n)
        check(isinstance(self.final_only, bool), f"{prefix}.final_only", "true or false", self.final_only)
        return self


def params_per_prompt(params: SamplingParams | list[SamplingParams] | None, num_prompts: int) -> list[SamplingParams]:
    """`generate`'s params, one per prompt (both engines take one for all or a list matching the prompts)."""
    params = SamplingParams() if params is None else params
    params_list = params if isinstance(params, list) else [params] * num_prompts
    if len(params_list) != num_prompts:
        raise ConfigError(f"params must be one SamplingParams or a list of one per prompt: got {len(params_list)} "
                          f"SamplingParams for {num_prompts} prompts")
    return params_list


@dataclasses.dataclass
class KVPolicy:
    """How one engine lays out, shares, compresses and prunes its KV cache, and how much it batches."""

    block_size: int = 16  # tokens per block
    num_blocks: int = 0  # set this or kv_budget_bytes; both 0: a default (see NativeEngine)
    kv_budget_bytes: int = 0
    enable_prefix_caching: bool = True
    kv_dtype: str = "model"  # model | int8 (per-block-per-head scales)
    pruning: str = "none"  # none | sink_window (StreamingLLM)
    sink_tokens: int = 4
    window_tokens: int = 256
    max_num_seqs: int = 16  # sequences running at once
    max_num_batched_tokens: int = 512  # token budget of one scheduler step

    def validate(self, prefix: str = "kv_policy") -> KVPolicy:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            check(is_int(value) and value > 0, f"{prefix}.{name}", "a positive integer", value)
        for name in ("num_blocks", "kv_budget_bytes", "sink_tokens", "window_tokens"):
            value = getattr(self, name)
            check(is_int(value) and value >= 0, f"{prefix}.{name}", "an integer >= 0", value)
        check(not (self.num_blocks and self.kv_budget_bytes), f"{prefix}.num_blocks",
              "0 when kv_budget_bytes is set (give one of the two)", self.num_blocks)
        check(isinstance(self.enable_prefix_caching, bool), f"{prefix}.enable_prefix_caching", "true or false",
              self.enable_prefix_caching)
        check(self.kv_dtype in KV_DTYPES, f"{prefix}.kv_dtype", f"one of {', '.join(KV_DTYPES)}", self.kv_dtype)
        check(self.pruning in PRUNING_MODES, f"{prefix}.pruning", f"one of {', '.join(PRUNING_MODES)}",
              self.pruning)
        if self.pruning == "sink_window":
            check(self.window_tokens >= self.block_size, f"{prefix}.window_tokens",
                   f">= block_size={self.block_size} when pruning=sink_window", self.window_tokens)
        return self


@dataclasses.dataclass
class CompletionOutput:
    """One of the `n` completions of a request; `delta_*` is what is new since the previous stream yield."""

    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None  # None while running; then stop | length | abort
    logprobs: list[dict[int, float]] | None = None  # per token: {token_id: logprob} for the sampled + top k
    delta_token_ids: list[int] = dataclasses.field(default_factory=list)
    delta_text: str = ""
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it, if any

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclasses.dataclass
class RequestOutput:
    """The state of one request: its prompt, how many prompt tokens came from the prefix cache, outputs."""

    request_id: str
    prompt_token_ids: list[int]
    num_cached_tokens: int
    outputs: list[CompletionOutput]
    finished: bool
    # With params.prompt_logprobs: per prompt token {token_id: logprob} of it plus the top k, None for the first
    # (nothing predicts it). Raw model log-probs, as for outputs. Only the first output of a stream carries them.
    prompt_logprobs: list[dict[int, float] | None] | None = None


@dataclasses.dataclass
class EngineStats:
    """A snapshot of the engine's load and KV cache."""

    num_running: int
    num_waiting: int
    num_blocks_total: int
    num_blocks_used: int  # referenced by a live sequence
    num_blocks_free: int  # not referenced (includes the cached ones)
    num_blocks_cached: int  # not referenced but holding a reusable prefix block
    prefix_cache_queries_tokens: int
    prefix_cache_hits_tokens: int
    num_preemptions: int
    block_size: int = 16
    kv_bytes_per_block: int = 0
    kv_bytes_total: int = 0
    kv_bytes_used: int = 0
    num_finished: int = 0
    num_generated_tokens: int = 0
    num_failed: int = 0  # requests ended by an error inside the engine (each alone; the others went on)

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits_tokens / self.prefix_cache_queries_tokens if self.prefix_cache_queries_tokens \
            else 0.0


@dataclasses.dataclass
class KVEvent:
    """A change to the set of cached prefix blocks, for a KV-aware router (hashes: `Engine.block_hashes`)."""

    kind: str  # stored | removed | cleared
    block_hashes: list[int]


@runtime_checkable
class Engine(Protocol):
    """What an engine replica offers: the native paged-KV engine and the vLLM adapter both implement it."""

    max_model_len: int
    block_size: int
    tokenizer: Any  # a tokenizers.Tokenizer
    eos_token_id: int

    def generate(self, prompts: list[str] | list[list[int]],
                 params: SamplingParams | list[SamplingParams]) -> list[RequestOutput]:
        """Run a batch to completion (blocking); one finished RequestOutput per prompt, in order."""
        ...

    def stream(self, request_id: str, prompt: str | list[int],
              params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """An async generator of deltas; the last one has finished=True. Stopping iteration aborts."""
        ...

    async def abort(self, request_id: str) -> None:
        ...

    def stats(self) -> EngineStats:
        ...

    def drain_kv_events(self) -> list[KVEvent]:
        """Events since the previous call: blocks stored into, or evicted from, the prefix cache."""
        ...

    def block_hashes(self, token_ids: list[int]) -> list[int]:
        """Chained hashes of the full blocks of `token_ids`, the scheme the prefix cache uses."""
        ...
