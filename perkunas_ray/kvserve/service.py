"""EngineService: one engine replica's plain core (the EngineServer deployment is a thin shell over it).

It builds the engine a registry entry names, streams requests as `OutputDelta`s, aborts a request whose
consumer goes away (so its KV blocks return to the pool), keeps a mirror of the prefix cache from the
engine's KV events for the router, and feeds the engine metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
from collections.abc import AsyncIterator
from typing import Any

from perkunas_ray.chat_template import CHAT_TEMPLATE
from perkunas_ray.engine.interface import Engine, SamplingParams
from perkunas_ray.errors import ConfigError, PerkunasError
from perkunas_ray.kvserve.metrics import EngineMetrics
from perkunas_ray.kvserve.registry import ModelSpec
from perkunas_ray.kvserve.routing import KVEventMirror
from perkunas_ray.kvserve.wire import ModelInfo, OutputDelta

VLLM_NOT_INSTALLED = ("model {model!r} has engine 'vllm', but vllm is not installed here (it needs a Linux GPU "
                      "machine: pip install 'perkunas-ray[vllm]'); use engine: native or install vllm")


def check_engine_available(spec: ModelSpec) -> None:
    """Fail at deploy time, with the model named, when the engine cannot run on this machine."""
    if spec.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise PerkunasError(VLLM_NOT_INSTALLED.format(model=spec.model_id))


def build_engine(spec: ModelSpec) -> Engine:
    check_engine_available(spec)
    if spec.engine == "vllm":
        from perkunas_ray.engine.vllm_engine import VLLMEngine

        dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(spec.dtype, spec.dtype)
        return VLLMEngine(spec.source, spec.kv_policy, max_model_len=spec.max_model_len, dtype=dtype,
                          seed=spec.seed)
    from perkunas_ray.engine.native import NativeEngine

    kwargs: dict[str, Any] = {"seed": spec.seed}
    if spec.max_model_len:
        kwargs["max_model_len"] = spec.max_model_len
    return NativeEngine.from_path(spec.source, spec.kv_policy, device=spec.device, dtype=spec.dtype, **kwargs)


def _chat_template(spec: ModelSpec, engine: Any) -> str:
    if spec.chat_template:
        return spec.chat_template
    template = getattr(engine, "chat_template", "")
    if template:
        return template
    try:
        from pathlib import Path

        from perkunas_ray.model_source import hf_chat_template

        return hf_chat_template(Path(spec.source))
    except Exception:  # noqa: BLE001 - any failure: our template
        return CHAT_TEMPLATE


class EngineService:
    """Hosts one engine; every method is safe to call from the replica's event loop."""

    def __init__(self, spec: ModelSpec, engine: Engine | None = None, replica: str = "local",
                 metrics: bool = True) -> None:
        self.spec = spec
        self.engine = engine if engine is not None else build_engine(spec)
        self.replica = replica
        self.mirror = KVEventMirror()
        self.metrics = EngineMetrics(spec.model_id, replica, enabled=metrics)
        self.chat_template = _chat_template(spec, self.engine)
        self.num_aborted = 0

    def info(self) -> ModelInfo:
        tokenizer = self.engine.tokenizer
        return ModelInfo(model_id=self.spec.model_id, max_model_len=int(self.engine.max_model_len),
                         vocab_size=int(tokenizer.get_vocab_size()), chat_template=self.chat_template,
                         tokenizer_json=tokenizer.to_str())

    async def stream(self, request_id: str, prompt_token_ids: list[int],
                     params: SamplingParams) -> AsyncIterator[OutputDelta]:
        """Yield the request's deltas; the last has finished=True.

        If the consumer stops early (a dropped client cancels the call, or closes the generator), the
        request is aborted and its blocks are freed.
        """
        finished = False
        outputs = self.engine.stream(request_id, list(prompt_token_ids), params)
        try:
            async for out in outputs:
                finished = out.finished
                yield OutputDelta.from_output(out)
                if finished:
                    return
        finally:
            if not finished:
                self.num_aborted += 1
                # Closing the engine's stream aborts the request; the explicit abort makes it immediate
                # even where the close is deferred (a cancelled task, a collected generator).
                await asyncio.shield(self.engine.abort(request_id))
            await outputs.aclose()

    async def stats(self) -> dict[str, Any]:
        stats = await asyncio.to_thread(self.engine.stats)
        self.metrics.update(stats)
        data = dataclasses.asdict(stats)
        data.update(replica=self.replica, model_id=self.spec.model_id, num_aborted=self.num_aborted,
                    prefix_cache_hit_rate=stats.prefix_cache_hit_rate)
        return data

    async def routing_stats(self) -> dict[str, Any]:
        """What the KV-aware router reads (via Serve's record_routing_stats): cache contents and load."""
        events = await asyncio.to_thread(self.engine.drain_kv_events)
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
