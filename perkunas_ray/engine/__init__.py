"""Inference: block pool, KV manager with prefix cache, scheduler, paged runner, sampler; vLLM adapter."""

from __future__ import annotations

from typing import Any

from perkunas_ray.engine.block_hash import block_hashes, hash_block
from perkunas_ray.engine.interface import (
    CompletionOutput,
    Engine,
    EngineStats,
    KVEvent,
    KVPolicy,
    RequestOutput,
    SamplingParams,
)

__all__ = ["CompletionOutput", "Engine", "EngineStats", "KVEvent", "KVPolicy", "NativeEngine", "RequestOutput",
           "SamplingParams", "VLLMEngine", "block_hashes", "hash_block"]


def __getattr__(name: str) -> Any:
    # The engines import torch (and vLLM lazily); keep `import perkunas_ray.engine` light for routers.
    if name == "NativeEngine":
        from perkunas_ray.engine.native import NativeEngine

        return NativeEngine
    if name == "VLLMEngine":
        from perkunas_ray.engine.vllm_engine import VLLMEngine

        return VLLMEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
