"""EngineCore: the native engine's synchronous core (admission, one scheduler step, stats), as vLLM's EngineCore is.

It owns the scheduler, the KV cache manager and store, the runner and the sampler, and knows nothing of asyncio:
requests are queued from any thread (`add`, `abort`) and applied at the start of the next `step`, under the step
lock; a request's outputs go to its sink, a callable. `generate` steps it in the caller's thread; NativeEngine
(native.py) is the async front that steps it on the torch thread for streams.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import torch

from perkunas_ray.engine.block_hash import block_hashes
from perkunas_ray.engine.interface import (
    EngineStats,
    KVEvent,
    KVPolicy,
    RequestFailedError,
    RequestOutput,
    SamplingParams,
    params_per_prompt,
)
from perkunas_ray.engine.kv_cache_manager import KVCacheManager, cdiv
from perkunas_ray.engine.kv_store import KVStore
from perkunas_ray.engine.output_processor import OutputProcessor, RequestState, SequenceState
from perkunas_ray.engine.request import Request, RequestStatus
from perkunas_ray.engine.runner import ModelRunner
from perkunas_ray.engine.sampler import Sampler
from perkunas_ray.engine.scheduler import Scheduler
from perkunas_ray.errors import ConfigError
from perkunas_ray.model.decoder import DecoderLM

logger = logging.getLogger("perkunas.engine")

Sink = Callable[[RequestOutput | BaseException], None]  # where a streamed request's outputs (or its error) go


class EngineCore:
    """Continuous batching over a paged KV cache, on CPU or one GPU; every method is safe from any thread."""

    def __init__(self, model: DecoderLM, tokenizer: Any, eos_token_id: int, policy: KVPolicy | None = None, *,
                 max_model_len: int | None = None, seed: int = 0, name: str = "native",
                 free_model_weights: bool = False) -> None:
        """free_model_weights: the engine owns `model` (nothing else runs it): the linear weights the C++ kernels
        hold as panels are freed from the model, so the engine keeps one copy of them, not two (ModelRunner)."""
        self.policy = policy = (policy or KVPolicy()).validate()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.name = name  # in log lines
        cfg = model.config
        self.block_size = bs = policy.block_size
        dtype = model.head_weight.dtype
        device = model.head_weight.device
        self.kv_bytes_per_block = KVStore.bytes_per_block(cfg.n_layers, bs, cfg.n_kv_heads, cfg.head_dim, dtype,
                                                          policy.kv_dtype)
        model_len = cfg.max_seq_len if max_model_len is None else max_model_len
        pruning = policy.pruning == "sink_window"
        # What one sequence can hold at once under sink+window pruning: sink blocks, the window, a chunk.
        per_seq_blocks = (cdiv(policy.sink_tokens, bs) + cdiv(policy.window_tokens + policy.max_num_batched_tokens, bs)
                          + 1) if pruning else cdiv(model_len, bs)
        if policy.num_blocks:
            num_blocks = policy.num_blocks
        elif policy.kv_budget_bytes:
            num_blocks = policy.kv_budget_bytes // self.kv_bytes_per_block
            if num_blocks < 1:
                raise ConfigError(f"kv_policy.kv_budget_bytes must hold at least one block of "
                                  f"{self.kv_bytes_per_block} bytes, got {policy.kv_budget_bytes}")
        else:
            num_blocks = policy.max_num_seqs * per_seq_blocks
        if pruning and num_blocks < per_seq_blocks:
            raise ConfigError(f"kv_policy: {num_blocks} blocks cannot hold one sequence under sink_window "
                              f"pruning (sink, window and a {policy.max_num_batched_tokens}-token chunk need "
                              f"{per_seq_blocks})")
        # Without pruning a sequence can only be as long as the pool; with it, only the prompt is capped.
        self.max_model_len = model_len if pruning else min(model_len, num_blocks * bs)
        self.kv_manager = KVCacheManager(num_blocks, bs, policy.enable_prefix_caching)
        self.kv_store = KVStore(cfg.n_layers, num_blocks, bs, cfg.n_kv_heads, cfg.head_dim, dtype, policy.kv_dtype,
                                device)
        self.scheduler = Scheduler(policy, self.kv_manager)
        self.runner = ModelRunner(model, self.kv_store, bs, free_model_weights)
        if self.runner.freed_bytes:
            logger.info("engine %s: the linear weights live as kernel panels only (%.1f MB of the model's own copies "
                        "freed)", name, self.runner.freed_bytes / 2**20)
        self.sampler = Sampler(self.runner.argmax_rows)
        self.output_processor = OutputProcessor(tokenizer, eos_token_id, self.max_model_len,
                                                bounded_length=not pruning)
        self.device = device
        self._rng = random.Random(seed)
        self._ids = itertools.count()
        self._states: dict[str, RequestState] = {}  # live user requests
        self._sequences: dict[str, SequenceState] = {}  # live sequences by internal request id
        self._step_lock = threading.RLock()
        self._pending_lock = threading.Lock()
        self._pending_adds: list[RequestState] = []
        self._pending_aborts: list[str] = []
        self._num_finished = 0
        self._num_generated_tokens = 0
        self._num_failed = 0
        self._failed: dict[str, RequestFailedError] = {}  # generate()'s requests that failed, until it raises
        self.num_steps = 0

    # ---- requests -------------------------------------------------------------------------------

    def _tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer.encode(prompt).ids)
        if not isinstance(prompt, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise ConfigError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        return list(prompt)

    def new_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    sink: Sink | None = None) -> RequestState:
        """A checked request (its prompt tokenized, one sequence per `n`), not yet admitted: `add` it. `sink`
        receives each new output (and an error, should the request fail); None: `generate` keeps the final one."""
        token_ids = self._tokenize(prompt)
        vocab = self.model.config.vocab_size
        if not token_ids:
            raise ConfigError(f"request {request_id!r}: the prompt is empty")
        if any(t < 0 or t >= vocab for t in token_ids):
            raise ConfigError(f"request {request_id!r}: prompt token ids must be in [0, {vocab})")
        if len(token_ids) > self.max_model_len:
            raise ConfigError(f"request {request_id!r}: the prompt has {len(token_ids)} tokens; this engine's "
                              f"max_model_len is {self.max_model_len}")
        sequences = []
        first_id = request_id if params.n == 1 else f"{request_id}/0"
        for index in range(params.n):
            generator = torch.Generator(device=self.device)
            seed = self._rng.getrandbits(63) if params.seed is None else (params.seed + index) % (1 << 64)
            generator.manual_seed(seed)
            request = Request(request_id if params.n == 1 else f"{request_id}/{index}", token_ids, params,
                              group_id=request_id, index=index, generator=generator,
                              share_prefix_with=first_id if index else None)
            sequences.append(SequenceState(request))
        return RequestState(request_id, token_ids, params, sequences, sink=sink)

    def add(self, state: RequestState) -> None:
        """Queue a request for admission at the next step (from any thread)."""
        with self._pending_lock:
            if state.request_id in self._states or any(s.request_id == state.request_id for s in self._pending_adds):
                raise ConfigError(f"request id {state.request_id!r} is already live")
            self._pending_adds.append(state)

    def abort(self, request_id: str) -> None:
        """Queue an abort for the next step (from any thread); unknown or finished ids are a no-op."""
        with self._pending_lock:
            self._pending_aborts.append(request_id)

    def _apply_pending(self) -> None:
        """Called under the step lock: admit queued requests, then apply queued aborts."""
        with self._pending_lock:
            adds, self._pending_adds = self._pending_adds, []
            aborts, self._pending_aborts = self._pending_aborts, []
        for state in adds:
            self._states[state.request_id] = state
            for seq in state.sequences:
                self._sequences[seq.request.request_id] = seq
                self.scheduler.add_request(seq.request)
        for request_id in aborts:
            self._abort_now(request_id)

    def _abort_now(self, request_id: str) -> None:
        state = self._states.get(request_id)
        if state is None:
            return  # finished already, or never existed: a no-op, as in vLLM
        for seq in state.sequences:
            if seq.finish_reason is None:
                self.scheduler.finish_request(seq.request.request_id, RequestStatus.FINISHED_ABORTED)
                self.output_processor.abort(seq)
        self._emit(state)

    def _emit(self, state: RequestState) -> None:
        """Hand a request's new output to its stream (only the last with `final_only`), or keep the final one for
        `generate`."""
        finished = state.finished
        if state.sink is not None and (finished or not state.params.final_only):
            state.sink(self.output_processor.make_output(state))
        elif finished:
            state.final_output = self.output_processor.make_output(state)
        if finished:
            self._num_finished += 1
            del self._states[state.request_id]
            for seq in state.sequences:
                self._sequences.pop(seq.request.request_id, None)

    # ---- stepping -------------------------------------------------------------------------------

    def has_unfinished(self) -> bool:
        return bool(self._pending_adds or self._pending_aborts or self.scheduler.num_unfinished)

    def step(self) -> None:
        """One scheduler step: schedule, run the model, sample, apply stop conditions, emit outputs.

        A failure is confined to the requests it concerns: a row the sampler or the output processor
        cannot handle fails only its request; a failed forward pass fails only the requests of this step.
        Either way the engine goes on serving the others.
        """
        with self._step_lock:
            self._apply_pending()
            scheduled = self.scheduler.schedule()
            if scheduled.is_empty:
                return
            self.num_steps += 1
            try:
                logits, prompt_logprobs = self.runner.execute(scheduled)
            except Exception as exc:  # noqa: BLE001 - the batch's requests fail, the engine lives on
                # Their blocks may be registered under hashes whose KV was never written: forget them.
                self.kv_manager.reset_prefix_cache()
                for item in scheduled.scheduled:
                    self._fail(item.request.group_id, exc)
                return
            for chunk in prompt_logprobs:
                if (owner := self._states.get(chunk.request.group_id)) is not None:
                    self.output_processor.add_prompt_logprobs(owner, chunk.first_position, chunk.entries)
            requests = [item.request for item in scheduled.scheduled if item.samples]
            sampled = self.sampler(logits, requests)
            self.scheduler.update_from_output(scheduled)
            touched: dict[str, RequestState] = {}
            for row, (request, token_id, logprobs) in enumerate(zip(requests, sampled.token_ids, sampled.logprobs,
                                                                    strict=True)):
                state = self._states.get(request.group_id)
                if state is None:  # a sibling sequence already failed the request
                    continue
                try:
                    if row in sampled.errors:
                        raise sampled.errors[row]
                    seq = self._sequences[request.request_id]
                    incremental_text = state.sink is not None and not state.params.final_only
                    status = self.output_processor.append_token(seq, token_id, logprobs, incremental_text)
                except Exception as exc:  # noqa: BLE001 - confined to this request
                    touched.pop(state.request_id, None)
                    self._fail(state.request_id, exc)
                    continue
                self._num_generated_tokens += 1
                if status is not None:
                    self.scheduler.finish_request(request.request_id, status)
                touched[state.request_id] = state
            for state in touched.values():
                if state.sink is not None or state.finished:
                    self._emit(state)

    def _fail(self, request_id: str, exc: Exception) -> None:
        """End a request with an error (under the step lock): its blocks go back, its consumer gets the error."""
        state = self._states.pop(request_id, None)
        if state is None:
            return
        logger.error("engine %s: request %s failed: %s: %s", self.name, request_id, type(exc).__name__, exc,
                     exc_info=exc)
        error = RequestFailedError(f"request {request_id!r} failed in the engine ({type(exc).__name__})")
        for seq in state.sequences:
            self._sequences.pop(seq.request.request_id, None)
            if seq.finish_reason is None:
                self.scheduler.finish_request(seq.request.request_id, RequestStatus.FINISHED_ABORTED)
                seq.finish_reason = RequestStatus.FINISHED_ABORTED.value
        self._num_failed += 1
        if state.sink is not None:
            state.sink(error)
        else:
            self._failed[request_id] = error

    def generate(self, prompts: list[str] | list[list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        """Run a batch to completion in the calling thread; one finished RequestOutput per prompt."""
        params_list = params_per_prompt(params, len(prompts))
        states = [self.new_request(f"generate-{next(self._ids)}", p, sp)
                  for p, sp in zip(prompts, params_list, strict=True)]
        for state in states:
            self.add(state)
        while any(state.final_output is None and state.request_id not in self._failed for state in states):
            self.step()
        for state in states:
            if state.request_id in self._failed:
                raise self._failed.pop(state.request_id)
        return [state.final_output for state in states]  # type: ignore[misc]

    # ---- introspection --------------------------------------------------------------------------

    def fail_streams(self, exc: BaseException) -> None:
        """The stepping itself broke (not one request): every live stream gets the error."""
        for state in list(self._states.values()):
            if state.sink is not None:
                state.sink(exc)

    def apply_pending(self) -> None:
        """Apply queued admissions and aborts now (an abort frees its blocks before the next step)."""
        with self._step_lock:
            self._apply_pending()

    def stats(self) -> EngineStats:
        with self._step_lock:
            self._apply_pending()
            pool = self.kv_manager.block_pool
            return EngineStats(
                num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
                num_blocks_total=pool.num_blocks, num_blocks_used=pool.num_used_blocks,
                num_blocks_free=pool.num_free_blocks, num_blocks_cached=pool.num_cached_free_blocks,
                prefix_cache_queries_tokens=self.kv_manager.prefix_cache_queries_tokens,
                prefix_cache_hits_tokens=self.kv_manager.prefix_cache_hits_tokens,
                num_preemptions=self.scheduler.num_preemptions, block_size=self.block_size,
                kv_bytes_per_block=self.kv_bytes_per_block, kv_bytes_total=self.kv_store.num_bytes,
                kv_bytes_used=pool.num_used_blocks * self.kv_bytes_per_block, num_finished=self._num_finished,
                num_generated_tokens=self._num_generated_tokens, num_failed=self._num_failed)

    def drain_kv_events(self) -> list[KVEvent]:
        with self._step_lock:
            return self.kv_manager.block_pool.drain_events()

    def block_hashes(self, token_ids: list[int]) -> list[int]:
        return block_hashes(token_ids, self.block_size)

    def reset_prefix_cache(self) -> None:
        with self._step_lock:
            self.kv_manager.reset_prefix_cache()
