"""NativeEngine: the PyTorch paged-KV engine's async front over its synchronous EngineCore (engine/core.py).

As vLLM splits AsyncLLM from EngineCore: the core admits requests, steps and reports; this front turns streams
into queued requests whose outputs land on the caller's event loop, and keeps one task stepping the core on the
torch thread (engine/torch_thread.py) while any request is live.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from perkunas_ray.engine.core import EngineCore
from perkunas_ray.engine.interface import EngineStats, KVEvent, KVPolicy, RequestOutput, SamplingParams
from perkunas_ray.engine.torch_thread import on_torch_thread
from perkunas_ray.model.decoder import DecoderLM

# The serving loop runs steps on the torch thread for up to this long per hand-off from the event loop: one
# executor round trip (a future, a wake-up of the loop, a GIL hand-over) per step cost ~0.1 ms of a 0.8 ms step at
# one stream. Outputs still reach their streams after every step (a first token ends the hand-off at once); an abort
# or a stats call waits at most this.
STEPS_PER_HANDOFF_S = 0.005


class NativeEngine:
    """Continuous batching over a paged KV cache, on CPU or one GPU (the `Engine` protocol).

    `generate` steps the core in the caller's thread until its requests finish. `stream` queues a request
    and makes sure one background asyncio task steps the core (each hand-off on the torch thread, so the
    event loop stays responsive) while any request is live; all live requests share every step.
    """

    def __init__(self, model: DecoderLM, tokenizer: Any, eos_token_id: int, policy: KVPolicy | None = None, *,
                 max_model_len: int | None = None, seed: int = 0, chat_template: str = "",
                 name: str = "native") -> None:
        self.core = EngineCore(model, tokenizer, eos_token_id, policy, max_model_len=max_model_len, seed=seed,
                               name=name)
        self.model = self.core.model
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.max_model_len = self.core.max_model_len
        self.block_size = self.core.block_size
        self.chat_template = chat_template
        self.name = name
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_path(cls, path: str | Path, policy: KVPolicy | None = None, device: str = "cpu", dtype: str = "fp32",
                  **kwargs: Any) -> NativeEngine:
        """Load a training run dir or a Hugging Face package dir (weights, tokenizer, EOS, chat template)."""
        from perkunas_ray.model_source import load_inference_model

        loaded = load_inference_model(path, device, dtype)
        return cls(loaded.model, loaded.tokenizer, loaded.eos_token_id, policy, chat_template=loaded.chat_template,
                   name=loaded.name, **kwargs)

    def generate(self, prompts: list[str] | list[list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        """Run a batch to completion in the calling thread; one finished RequestOutput per prompt."""
        return self.core.generate(prompts, params)

    async def stream(self, request_id: str, prompt: str | list[int],
                     params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs (with deltas) as it progresses; the last has finished=True.

        Leaving the iteration early (break, cancellation, a dropped client) aborts the request.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def sink(item: Any) -> None:  # on the torch thread: hand the item to this loop
            with contextlib.suppress(RuntimeError):  # the loop is closed: its consumer is gone, nobody needs it
                loop.call_soon_threadsafe(queue.put_nowait, item)

        self.core.add(self.core.new_request(request_id, prompt, params, sink))
        self._ensure_stepping(loop)
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.core.abort(request_id)
                self._ensure_stepping(loop)

    def _ensure_stepping(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop.is_closed():
            return
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._step_loop())

    def _steps(self, budget_s: float) -> None:
        """Step while there is work, for up to `budget_s` (at least one step), and no further than a step that gave
        a stream its first output: while this thread steps it mostly holds the GIL, and the event loop must send
        that token now, not coalesced with the next ones (TTFT)."""
        deadline = time.perf_counter() + budget_s
        while self.core.has_unfinished():
            if self.core.step() or time.perf_counter() >= deadline:
                return

    async def _step_loop(self) -> None:
        try:
            while self.core.has_unfinished():
                await on_torch_thread(self._steps, STEPS_PER_HANDOFF_S)
        except Exception as exc:  # step() confines request failures; anything left is the engine's own
            self.core.fail_streams(exc)
            raise

    async def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks (no-op when unknown or finished)."""
        self.core.abort(request_id)
        await on_torch_thread(self.core.apply_pending)

    def stats(self) -> EngineStats:
        return self.core.stats()

    def drain_kv_events(self) -> list[KVEvent]:
        return self.core.drain_kv_events()

    def block_hashes(self, token_ids: list[int]) -> list[int]:
        return self.core.block_hashes(token_ids)

    def reset_prefix_cache(self) -> None:
        self.core.reset_prefix_cache()
