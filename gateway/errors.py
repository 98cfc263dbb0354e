"""One error model: every failure leaves as `{"error": {"message", "type", "param", "code"}}`.

Handlers raise `APIError` subclasses; litestar's own exceptions (malformed JSON, schema
validation, unknown route) and anything unexpected are converted by `exception_handlers`, so
no stack trace or framework-specific body ever reaches a client.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from gateway.protocol import ErrorBody, ErrorResponse

REQUEST_ID_HEADER = "x-request-id"

__all__ = [
    "REQUEST_ID_HEADER",
    "APIError",
    "AdapterLoadError",
    "AuthenticationError",
    "BadRequestError",
    "ContextLengthError",
    "EngineUnavailableError",
    "ModelNotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "error_body",
    "exception_handlers",
]

log = logging.getLogger("tunegate.gateway")


class APIError(Exception):
    status_code = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        return error_body(self.message, self.type, self.param, self.code)


class BadRequestError(APIError):
    status_code = 400
    type = "invalid_request_error"


class ContextLengthError(BadRequestError):
    code = "context_length_exceeded"


class ModelNotFoundError(APIError):
    status_code = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model")


class OverloadedError(APIError):
    status_code = 503
    type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class EngineUnavailableError(OverloadedError):
    """The engine died: nothing can be served until a supervisor restarts the gateway."""

    code = "engine_unavailable"


class AuthenticationError(APIError):
    status_code = 401
    type = "invalid_request_error"


class PermissionDeniedError(APIError):
    status_code = 403
    type = "invalid_request_error"
    code = "insufficient_permissions"


class RateLimitError(APIError):
    """Per-key requests or tokens per minute spent; headers carry Retry-After and the
    x-ratelimit-* state."""

    status_code = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.type = kind  # OpenAI's type names the spent limit: "requests" or "tokens"


class ServerError(APIError):
    """Something failed on our side; the message never carries internals."""


class AdapterLoadError(ServerError):
    """The adapter's files on disk could not be loaded (corrupt or missing): only requests
    naming it fail; the operator has to republish it."""

    code = "adapter_load_failed"


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> ErrorResponse:
    return ErrorResponse(error=ErrorBody(message=message, type=type_, param=param, code=code))


def _response(
    status: int, body: ErrorResponse, headers: dict[str, str] | None = None
) -> Response[Any]:
    headers = dict(headers or {})
    # Errors raised before a handler ran (schema, routing) still get an id to quote.
    headers.setdefault(REQUEST_ID_HEADER, f"req-{uuid.uuid4().hex}")
    return Response(
        content=body.model_dump(mode="json"),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def _param_from_key(key: str) -> str | None:
    # litestar reports pydantic's location as "messages.0.role"; OpenAI writes
    # "messages.[0].role".
    if not key:
        return None
    return re.sub(r"(^|\.)(\d+)(?=\.|$)", r"\1[\2]", key)


def _on_api_error(request: Request[Any, Any, Any], exc: APIError) -> Response[Any]:
    return _response(exc.status_code, exc.body(), exc.headers)


def _on_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    problems = exc.extra if isinstance(exc.extra, list) else []
    first = problems[0] if problems and isinstance(problems[0], dict) else {}
    param = _param_from_key(str(first.get("key") or ""))
    detail = str(first.get("message") or exc.detail or "invalid request body")
    # pydantic prefixes errors raised in validators with "Value error, "; drop it.
    detail = detail.removeprefix("Value error, ")
    message = f"{param}: {detail}" if param else detail
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem(s))"
    return _response(400, error_body(message, "invalid_request_error", param))


def _on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status >= 500:
        return _on_unexpected(request, exc)
    type_ = "invalid_request_error"
    detail = exc.detail or "invalid request"
    if status == 404:
        detail = f"no route {request.method} {request.url.path}"
    elif status == 400 and "JSON" in detail:
        detail = f"the request body is not valid JSON: {detail}"
    return _response(status, error_body(detail, type_), exc.headers)


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _response(
        500, error_body("the server failed to process the request; it was logged", "server_error")
    )


exception_handlers: dict[int | type[Exception], Any] = {
    APIError: _on_api_error,
    ValidationException: _on_validation,
    HTTPException: _on_http,
    Exception: _on_unexpected,
}
