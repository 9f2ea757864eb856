"""NativeEngine: the PyTorch paged-KV engine's async front over its synchronous EngineCore (engine/core.py).

As vLLM splits AsyncLLM from EngineCore: the core admits requests, steps and reports; this front turns streams
into queued requests whose outputs land on the caller's event loop, and keeps stepping jobs running on the torch
thread (engine/torch_thread.py) while any request is live.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from perkunas_ray.engine.core import EngineCore
from perkunas_ray.engine.interface import EngineStats, KVEvent, KVPolicy, RequestOutput, SamplingParams
from perkunas_ray.engine.loop_inbox import LoopInboxes
from perkunas_ray.engine.torch_thread import on_torch_thread, submit_to_torch_thread
from perkunas_ray.model.decoder import DecoderLM

logger = logging.getLogger("perkunas.engine")

# A stepping job on the torch thread steps for up to this long, then queues its successor there: other torch-thread
# work (an abort's release of blocks, a checkpoint switch) waits at most this. The event loop is not in that chain:
# when each next step waited for the loop to take the previous hand-off's result (a future, a wake-up, the GIL), the
# engine idled while the loop sent the step's SSE events, and the loop idled while the engine stepped.
STEPS_PER_HANDOFF_S = 0.005


class NativeEngine:
    """Continuous batching over a paged KV cache, on CPU or one GPU (the `Engine` protocol).

    `generate` steps the core in the caller's thread until its requests finish. `stream` queues a request and
    makes sure a stepping job runs on the torch thread while any request is live (each queues the next, see
    STEPS_PER_HANDOFF_S); all live requests share every step, and outputs reach each stream's event loop.
    """

    def __init__(self, model: DecoderLM, tokenizer: Any, eos_token_id: int, policy: KVPolicy | None = None, *,
                 max_model_len: int | None = None, seed: int = 0, chat_template: str = "",
                 name: str = "native", free_model_weights: bool = False) -> None:
        self.core = EngineCore(model, tokenizer, eos_token_id, policy, max_model_len=max_model_len, seed=seed,
                               name=name, free_model_weights=free_model_weights)
        self.model = self.core.model
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.max_model_len = self.core.max_model_len
        self.block_size = self.core.block_size
        self.chat_template = chat_template
        self.name = name
        self._stepping = False  # a stepping job is queued or running on the torch thread
        self._stepping_lock = threading.Lock()
        self._inboxes = LoopInboxes()  # where the torch thread leaves each stream's outputs

    @classmethod
    def from_path(cls, path: str | Path, policy: KVPolicy | None = None, device: str = "cpu", dtype: str = "fp32",
                  **kwargs: Any) -> NativeEngine:
        """Load a training run dir or a Hugging Face package dir (weights, tokenizer, EOS, chat template). The
        engine owns the model it loads (`free_model_weights`, unless kwargs say otherwise)."""
        from perkunas_ray.model_source import load_inference_model

        loaded = load_inference_model(path, device, dtype)
        kwargs.setdefault("free_model_weights", True)
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
        queue: asyncio.Queue[Any] = asyncio.Queue()
        inbox = self._inboxes.of(asyncio.get_running_loop())
        self.core.add(self.core.new_request(request_id, prompt, params, lambda item: inbox.put(queue, item)))
        self._ensure_stepping()
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
                self._ensure_stepping()

    def _ensure_stepping(self) -> None:
        with self._stepping_lock:
            if self._stepping:
                return
            self._stepping = True
        self._queue_stepping_job()

    def _queue_stepping_job(self) -> None:
        try:
            submit_to_torch_thread(self._stepping_job)
        except RuntimeError:  # the interpreter is shutting down: no stream is left to serve
            with self._stepping_lock:
                self._stepping = False

    def _stepping_job(self) -> None:
        """On the torch thread: step while there is work, for up to STEPS_PER_HANDOFF_S (at least one step), then
        queue the next job behind whatever else waits for this thread, or stop when no request is left."""
        deadline = time.perf_counter() + STEPS_PER_HANDOFF_S
        try:
            while self.core.has_unfinished():
                self.core.step()
                if time.perf_counter() >= deadline:
                    break
        except Exception as exc:  # noqa: BLE001 - step() confines request failures; anything left is the engine's
            logger.exception("engine %s: stepping failed; its streams get the error", self.name)
            with self._stepping_lock:
                self._stepping = False
            self.core.fail_streams(exc)
            return
        with self._stepping_lock:  # an add() that finds _stepping set relies on this check seeing its request
            if not self.core.has_unfinished():
                self._stepping = False
                return
        self._queue_stepping_job()

    async def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks (no-op when unknown or finished); returns once they are free."""
        self.core.abort(request_id)
        await on_torch_thread(self.core.apply_pending)  # behind the running stepping job, at most its hand-off

    def stats(self) -> EngineStats:
        return self.core.stats()

    def drain_kv_events(self) -> list[KVEvent]:
        return self.core.drain_kv_events()

    def block_hashes(self, token_ids: list[int]) -> list[int]:
        return self.core.block_hashes(token_ids)

    def reset_prefix_cache(self) -> None:
        self.core.reset_prefix_cache()
