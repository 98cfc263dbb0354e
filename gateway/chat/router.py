"""HTTP binding of chat completions."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.response import Stream

from gateway._responses import GENERATION_ERRORS
from gateway.protocol import ChatCompletionRequest

__all__ = ["create_chat_completion"]


@post(
    "/v1/chat/completions",
    status_code=200,
    summary="Create a chat completion (JSON, or SSE when stream is true)",
    responses=GENERATION_ERRORS,
    tags=["generation"],
)
async def create_chat_completion(
    data: ChatCompletionRequest, request: Request[Any, Any, Any]
) -> Response[Any] | Stream:
    return await request.app.state.chat.serve(data, request)  # type: ignore[no-any-return]
