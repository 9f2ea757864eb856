"""KVServeEngineIngress: the OpenAI routes and the one model's engine in the same replica (`ingress.mode: combined`).

With one model on one replica, a separate ingress only adds a hop: every request and every stream message would
cross from the engine replica to the ingress replica (a Ray call each) before Serve's proxy. Here the app calls
the engine in-process (`LocalServingBackend`), as the tests and tools do; the engine steps on its torch thread
while the replica's event loop serves HTTP.
"""

from __future__ import annotations

import logging
from typing import Any

from deployments.engine_server import replica_engine_service
from perkunas_ray.kvserve.api import create_app
from perkunas_ray.kvserve.auth import TokenAuth, resolve_tokens
from perkunas_ray.kvserve.backend import LocalServingBackend
from perkunas_ray.kvserve.metrics import RequestMetrics
from perkunas_ray.kvserve.registry import Registry

logger = logging.getLogger("ray.serve")


class KVServeEngineIngress:
    """Options (resources, concurrency) are applied by `deployments.app.build_registry_app`."""

    def __init__(self, registry: Registry, api_tokens: Any = None) -> None:
        (spec,) = registry.models.values()
        self.service = replica_engine_service(spec, combined=True)
        self.auth = TokenAuth(resolve_tokens(api_tokens, registry.api_tokens))
        self.backend = LocalServingBackend(registry, {spec.model_id: self.service})
        self.max_body_bytes = registry.max_body_bytes
        log = logger.info if self.auth.enabled else logger.warning
        log("kvserve ingress (with the engine of %s): %s", spec.model_id, self.auth.describe())

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.backend, self.auth, max_body_bytes=self.max_body_bytes, metrics=RequestMetrics())

    async def __del__(self) -> None:
        """Serve's shutdown hook: stop following, and shut down an engine's processes (vLLM's engine core)."""
        await self.service.close()
