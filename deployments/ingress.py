"""KVServeIngress: the Serve shell over the plain FastAPI app, talking to EngineServer deployments by handle."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from deployments.rate_board import SharedRateLimiter
from deployments.router import router_views
from perkunas_ray.engine.interface import SamplingParams
from perkunas_ray.errors import PerkunasError
from perkunas_ray.kvserve.api import create_app
from perkunas_ray.kvserve.auth import TokenAuth, resolve_tokens
from perkunas_ray.kvserve.backend import ServingBackend
from perkunas_ray.kvserve.errors import APIError, overloaded, unavailable
from perkunas_ray.kvserve.metrics import RequestMetrics
from perkunas_ray.kvserve.registry import Registry
from perkunas_ray.kvserve.serve_options import deployment_name
from perkunas_ray.kvserve.wire import ModelInfo, OutputDelta

logger = logging.getLogger("ray.serve")


def _user_error(exc: BaseException) -> PerkunasError | None:
    """The PerkunasError behind a Ray task error raised by an engine replica, if that is what it was."""
    seen = exc
    for _ in range(4):
        if isinstance(seen, PerkunasError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
        if seen is None:
            return None
    return None


def _api_error(exc: Exception, retry_after_s: float) -> Exception:
    """What the client hears of an engine call's failure: its own mistake (400), a full queue (503 with
    Retry-After), a replica gone (503), else the failure itself (a 500 that names only an error id)."""
    user_error = _user_error(exc)
    if user_error is not None:
        return APIError(400, str(user_error))
    if isinstance(exc, BackPressureError):
        return overloaded(exc.retry_after_s if exc.retry_after_s is not None else retry_after_s)
    if isinstance(exc, RayActorError):  # ActorDiedError, ActorUnavailableError: the replica went away
        return unavailable("the engine replica serving this request stopped; retry the request")
    return exc


class ServeBackend(ServingBackend):
    """Engine calls over DeploymentHandles; the prompt's token ids go as a keyword for the KV-aware router."""

    def __init__(self, registry: Registry, handles: dict[str, Any]) -> None:
        super().__init__(registry)
        self.handles = handles

    async def fetch_info(self, model_id: str) -> ModelInfo:
        return await self._call(model_id, "info")

    async def _call(self, model_id: str, method: str, **kwargs: Any) -> Any:
        """A unary engine call, its failure told as the client should hear it (see _api_error)."""
        try:
            return await getattr(self.handles[model_id], method).remote(**kwargs)
        except Exception as exc:
            raise _api_error(exc, self.registry.models[model_id].retry_after_s) from exc

    async def complete(self, model_id: str, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> OutputDelta:
        return await self._call(model_id, "complete", request_id=request_id, prompt_token_ids=prompt_token_ids,
                                params=params)

    async def stream(self, model_id: str, request_id: str, prompt_token_ids: list[int],
                     params: SamplingParams) -> AsyncIterator[OutputDelta]:
        gen = None
        try:
            gen = self.handles[model_id].options(stream=True).stream.remote(
                request_id=request_id, prompt_token_ids=prompt_token_ids, params=params)
            async for delta in gen:
                yield delta
        except Exception as exc:
            raise _api_error(exc, self.registry.models[model_id].retry_after_s) from exc
        finally:
            # A dropped client cancels us: cancel the engine call, whose replica then aborts the request.
            # (A call that never started re-raises its own error here: that one is already told above.)
            if gen is not None:
                with contextlib.suppress(Exception):
                    gen.cancel()

    async def stats(self, model_id: str) -> dict[str, Any]:
        """One replica's engine stats, and what this ingress's KV routers know of every replica ("routers")."""
        stats = await self._call(model_id, "stats")
        return {**stats, "routers": router_views(deployment_name(model_id))}


class KVServeIngress:
    """Options (replicas, resources, concurrency) are applied by `deployments.app.build_registry_app`."""

    def __init__(self, handles: dict[str, Any], registry: Registry, api_tokens: Any = None,
                 rate_board: Any = None) -> None:
        self.auth = TokenAuth(resolve_tokens(api_tokens, registry.api_tokens))
        self.backend = ServeBackend(registry, handles)
        # Several ingress replicas share one budget per key (deployments/rate_board.py); one keeps its own.
        self.rate_limiter = None if rate_board is None else SharedRateLimiter(rate_board, registry.limits)
        self.max_body_bytes = registry.max_body_bytes
        log = logger.info if self.auth.enabled else logger.warning
        log("kvserve ingress: %s", self.auth.describe())

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.backend, self.auth, max_body_bytes=self.max_body_bytes, metrics=RequestMetrics(),
                          rate_limiter=self.rate_limiter)
