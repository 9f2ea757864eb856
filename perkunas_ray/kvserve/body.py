"""Request bodies read and parsed by hand, so size limits, malformed JSON and bad types are 413/400, never 422."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from perkunas_ray.kvserve.errors import APIError, payload_too_large

M = TypeVar("M", bound=BaseModel)


def validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    """The first error as `field: message`, and the field's name for OpenAI's `param`."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = loc[0] if loc else None
    where = ".".join(loc) or "body"
    return f"{where}: {first.get('msg', 'invalid value')}", param


async def read_json(request: Request, max_body_bytes: int) -> dict[str, Any]:
    """The body as a JSON object: 413 past the limit (declared or actual), 400 when it is not one."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_body_bytes:
                raise payload_too_large(max_body_bytes)
        except ValueError:
            raise APIError(400, "invalid Content-Length header") from None
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_body_bytes:
            raise payload_too_large(max_body_bytes)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise APIError(400, "the request body is empty; expected a JSON object")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def parse(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise APIError(400, message, param=param) from None
