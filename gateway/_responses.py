"""OpenAPI descriptions of the error responses every endpoint can give."""

from __future__ import annotations

from litestar.openapi.datastructures import ResponseSpec

from gateway.protocol import ErrorResponse

__all__ = ["GENERATION_ERRORS", "READ_ERRORS"]

_BAD = ResponseSpec(data_container=ErrorResponse, description="Invalid request body")
_NOT_FOUND = ResponseSpec(data_container=ErrorResponse, description="Unknown model")
_BUSY = ResponseSpec(
    data_container=ErrorResponse, description="Overloaded or shutting down (see Retry-After)"
)
_FAILED = ResponseSpec(data_container=ErrorResponse, description="Server error")

GENERATION_ERRORS = {400: _BAD, 404: _NOT_FOUND, 503: _BUSY, 500: _FAILED}
READ_ERRORS = {400: _BAD, 500: _FAILED}
