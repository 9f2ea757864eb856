"""EngineServer: the Serve shell over `EngineService` (one engine per replica; streaming, stats, routing stats)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from perkunas_ray.engine.interface import SamplingParams
from perkunas_ray.kvserve.registry import ModelSpec
from perkunas_ray.kvserve.service import EngineService
from perkunas_ray.kvserve.wire import ModelInfo, OutputDelta


def replica_engine_service(spec: ModelSpec, combined: bool = False) -> EngineService:
    """The engine service of this Serve replica: torch's threads set from the spec, metrics tagged with the
    replica's id; `combined`: the routes run in this replica (its streams' pacing: ModelSpec.pacing)."""
    import torch
    from ray import serve

    torch.set_num_threads(spec.resolved_num_threads)
    try:
        replica = serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica (direct construction in tests)
        replica = "local"
    return EngineService(spec, replica=replica, combined=combined)


class EngineServer:
    """Options (replicas, resources, router) are applied by `deployments.app.build_registry_app`."""

    def __init__(self, spec: ModelSpec) -> None:
        self.service = replica_engine_service(spec)

    def info(self) -> ModelInfo:
        return self.service.info()

    async def stream(self, request_id: str, prompt_token_ids: list[int],
                     params: SamplingParams) -> AsyncIterator[OutputDelta]:
        # Serve cancels this generator when the caller (the ingress) cancels or drops the call; the
        # service's finally then aborts the engine request, freeing its KV blocks.
        async for delta in self.service.stream(request_id, prompt_token_ids, params):
            yield delta

    async def complete(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> OutputDelta:
        # One reply for a non-streaming request; a cancelled call aborts the engine request the same way.
        return await self.service.complete(request_id, prompt_token_ids, params)

    async def stats(self) -> dict[str, Any]:
        return await self.service.stats()

    async def reset_prefix_cache(self) -> None:
        await self.service.reset_prefix_cache()

    async def record_routing_stats(self) -> dict[str, Any]:
        """Serve's request-router hook (polled by the controller): this replica's cached block hashes."""
        return await self.service.routing_stats()

    async def __del__(self) -> None:
        """Serve's shutdown hook: stop following, and shut down an engine's processes (vLLM's engine core)."""
        await self.service.close()
