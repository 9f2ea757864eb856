"""Request bodies read and parsed by hand, so size limits, malformed JSON and bad types are 413/400, never 422."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from perkunas_ray.kvserve.errors import APIError, payload_too_large

M = TypeVar("M", bound=BaseModel)
_SURROGATE = re.compile("[\ud800-\udfff]")


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


async def read_json(request: Request, max_body_bytes: int, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object: 413 past the limit (declared or actual), 400 when it is not one, nests
    deeper than `max_depth`, or holds text that is not valid Unicode."""
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
        data = json.loads(body, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # deeper than the parser can go: certainly deeper than max_depth
        raise _too_deep(max_depth) from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    check_json_values(data, max_depth)
    return data


def _no_constant(name: str) -> Any:
    """Python's json reads NaN and Infinity; JSON has no such values (and a NaN temperature means nothing)."""
    raise APIError(400, f"the request body is not valid JSON: {name} is not a JSON value", code="invalid_json")


def _too_deep(max_depth: int) -> APIError:
    return APIError(400, f"the request body nests deeper than {max_depth} levels (limits.max_json_depth)",
                    code="invalid_json")


def check_json_values(data: dict[str, Any], max_depth: int) -> None:
    """400 for nesting past `max_depth` or a string (or key) with a lone UTF-16 surrogate: such text
    cannot be encoded, so it must stop here rather than fail in the tokenizer. The error names the field."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise APIError(400, f"{'.'.join(where)}: the text holds a lone UTF-16 surrogate (such as \\ud800) "
                                    "and is not valid Unicode", param=where[0], code="invalid_unicode")
        elif isinstance(value, (dict, list)):
            if len(where) >= max_depth:
                raise _too_deep(max_depth)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                stack.append((item, (*where, str(key))))
                if isinstance(key, str) and _SURROGATE.search(key):
                    stack.append((key, (*where, "<key>")))


def parse(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise APIError(400, message, param=param) from None
