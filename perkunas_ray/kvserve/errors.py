"""OpenAI-style API errors: one exception type carrying HTTP status, error type, param and code."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error the HTTP layer turns into `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status_code: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code

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
