"""The OpenAI-compatible FastAPI app: shared state, the routes, and every error in OpenAI's schema.

Errors leave as `{"error": {"message", "type", "param", "code"}}`; bad input is a 4xx, never a 500
(FastAPI's 422 handler is overridden too).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from perkunas_ray.errors import PerkunasError
from perkunas_ray.kvserve.admission import registry_admission
from perkunas_ray.kvserve.auth import TokenAuth
from perkunas_ray.kvserve.backend import ServingBackend
from perkunas_ray.kvserve.body import validation_message
from perkunas_ray.kvserve.errors import APIError, error_body, internal_error, new_error_id
from perkunas_ray.kvserve.metrics import RequestMetrics
from perkunas_ray.kvserve.rate_limit import RateLimit, RateLimiter
from perkunas_ray.kvserve.routes import AppState, router

logger = logging.getLogger("perkunas.kvserve")
PLAYGROUND = Path(__file__).with_name("playground")


def create_app(backend: ServingBackend, auth: TokenAuth, *, max_body_bytes: int = 1 << 20,
               metrics: RequestMetrics | None = None, rate_limiter: RateLimit | None = None) -> FastAPI:
    """`rate_limiter`: this replica's own (the default), or one shared by every ingress replica."""
    metrics = metrics or RequestMetrics(enabled=False)
    rate_limiter = rate_limiter or RateLimiter(backend.registry.limits)
    # The OpenAPI schema is served (clients and the fuzz tests read it); the interactive docs stay off.
    app = FastAPI(title="perkunas kvserve", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    logger.info("kvserve: %s", auth.describe())
    app.state.kvserve = AppState(backend, auth, metrics, max_body_bytes, rate_limiter,
                                  registry_admission(backend.registry))
    _add_error_handlers(app, metrics)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(router)
    _add_playground(app)
    return app


def _add_playground(app: FastAPI) -> None:
    """The web playground at `/`: static files only, open like /health (it holds no secret; its API calls carry
    the token the user types, and the API checks it)."""
    app.mount("/playground", StaticFiles(directory=PLAYGROUND), name="playground")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(PLAYGROUND / "index.html")


def route_label(request: Request) -> str:
    """The matched route's template (`/v1/models/{model_id}`), never the raw path: metric series stay bounded."""
    return getattr(request.scope.get("route"), "path_format", None) or "unmatched"


def _add_error_handlers(app: FastAPI, metrics: RequestMetrics) -> None:
    def reply(request: Request, status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.request(route_label(request), status)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return reply(request, exc.status_code, exc.body(), exc.headers)

    @app.exception_handler(PerkunasError)
    async def _user_error(request: Request, exc: PerkunasError) -> JSONResponse:
        return reply(request, 400, error_body(str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return reply(request, 400, error_body(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return reply(request, exc.status_code, error_body(str(exc.detail), kind))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        error = internal_error(new_error_id())
        logger.error("kvserve: internal error %s on %s", error.headers["X-Request-Id"], route_label(request),
                     exc_info=exc)
        return reply(request, 500, error.body(), error.headers)
