"""OpenAI-style API errors: one exception type carrying HTTP status, error type, param and code."""

from __future__ import annotations

import math
import uuid
from typing import Any


class APIError(Exception):
    """An error the HTTP layer turns into `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status_code: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(model_id: str) -> APIError:
    return APIError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")


def context_length_exceeded(max_model_len: int, num_prompt: int, max_tokens: int, param: str = "prompt") -> APIError:
    return APIError(400, f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                         f"{num_prompt + max_tokens} tokens ({num_prompt} in the prompt, {max_tokens} for the "
                         "completion). Please reduce the prompt or max_tokens.",
                    param=param, code="context_length_exceeded")


def unauthorized(message: str = "Invalid or missing API key (send 'Authorization: Bearer TOKEN')") -> APIError:
    return APIError(401, message, type="authentication_error", code="invalid_api_key")


def payload_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body exceeds the limit of {limit} bytes", code="payload_too_large")


def new_error_id() -> str:
    return f"err-{uuid.uuid4().hex[:16]}"


def internal_error(error_id: str) -> APIError:
    """A server fault: the reply names an id to quote, never the exception (that goes to the log)."""
    return APIError(500, f"The server had an error while processing your request (error id {error_id}); "
                         "its log has the details", type="internal_error", code="internal_error",
                    headers={"X-Request-Id": error_id})


def overloaded(retry_after_s: float, what: str = "the model's engine replicas are busy") -> APIError:
    return APIError(503, f"The server is overloaded ({what}); retry after {_seconds(retry_after_s)} s",
                    type="server_error", code="overloaded", headers={"Retry-After": _seconds(retry_after_s)})


def rate_limited(limit: int, retry_after_s: float) -> APIError:
    return APIError(429, f"Rate limit reached: {limit} requests per minute for this API key (limits."
                         f"requests_per_minute); retry after {_seconds(retry_after_s)} s",
                    type="rate_limit_error", code="rate_limit_exceeded",
                    headers={"Retry-After": _seconds(retry_after_s)})


def unavailable(message: str) -> APIError:
    return APIError(503, message, type="server_error", code="engine_unavailable", headers={"Retry-After": "1"})


def _seconds(value: float) -> str:
    """Retry-After takes whole seconds (RFC 9110); round up so no client retries too early."""
    return str(max(0, math.ceil(value)))
