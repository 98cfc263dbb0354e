"""HTTP binding of text completions."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.response import Stream

from gateway._responses import GENERATION_ERRORS
from gateway.protocol import CompletionRequest

__all__ = ["create_completion"]


@post(
    "/v1/completions",
    status_code=200,
    summary="Create a text completion (JSON, or SSE when stream is true)",
    responses=GENERATION_ERRORS,
    tags=["generation"],
)
async def create_completion(
    data: CompletionRequest, request: Request[Any, Any, Any]
) -> Response[Any] | Stream:
    return await request.app.state.completions.serve(data, request)  # type: ignore[no-any-return]
