"""HTTP binding of captures: `/v1/captures/{request_id}` (any captured request) and OpenAI's
stored chat completions (`client.chat.completions.retrieve/list/delete`).

A key sees and removes only its own requests' captures (an admin key every one); another
key's capture answers exactly like an unknown id.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from litestar import Request, delete, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from gateway._responses import READ_ERRORS
from gateway.auth import ApiKey, caller
from gateway.capture.capturer import Capturer
from gateway.capture.protocol import (
    CaptureNotFoundError,
    CaptureObject,
    Deleted,
    MetadataUpdate,
    StoredChatCompletion,
    StoredChatCompletionList,
)
from gateway.capture.store import Capture
from gateway.errors import BadRequestError
from gateway.protocol import ErrorResponse

__all__ = ["CAPTURE_ROUTES"]

_ERRORS = {
    **READ_ERRORS,
    404: ResponseSpec(data_container=ErrorResponse, description="Unknown id (or another key's)"),
}
_STORED = "stored chat completion"


def _may_see(key: ApiKey | None, capture: Capture) -> bool:
    return key is None or key.admin or capture.key_id == key.name


async def _find(request: Request[Any, Any, Any], request_id: str, chat: bool) -> Capture:
    """The live capture `request_id` if the caller may see it; `chat`: through OpenAI's
    stored-completion routes (chat captures only)."""
    capturer: Capturer = request.app.state.capturer
    # Read-your-writes: a capture of a request answered a moment ago may still be queued.
    await asyncio.to_thread(capturer.flush)
    capture = await asyncio.to_thread(capturer.store.get, request_id)
    if (
        capture is None
        or not _may_see(caller(request), capture)
        or (chat and capture.operation != "chat")
    ):
        if chat:
            raise CaptureNotFoundError(_STORED, request_id, "completion_id")
        raise CaptureNotFoundError("capture", request_id, "request_id")
    return capture


async def _delete(request: Request[Any, Any, Any], request_id: str, chat: bool) -> Deleted:
    capture = await _find(request, request_id, chat)
    capturer: Capturer = request.app.state.capturer
    deleted = await asyncio.to_thread(capturer.store.delete, capture.request_id)
    return Deleted(
        id=request_id,
        object="chat.completion.deleted" if chat else "capture.deleted",
        deleted=deleted,
    )


@get(
    "/v1/captures/{request_id:str}",
    summary="A captured request: its prompt as sent, the answer, usage and metadata",
    responses=_ERRORS,
    tags=["captures"],
)
async def get_capture(request_id: str, request: Request[Any, Any, Any]) -> CaptureObject:
    return CaptureObject.of(await _find(request, request_id, chat=False))


@delete(
    "/v1/captures/{request_id:str}",
    status_code=200,
    summary="Remove a request's captured prompt and answer now",
    responses=_ERRORS,
    tags=["captures"],
)
async def delete_capture(request_id: str, request: Request[Any, Any, Any]) -> Deleted:
    return await _delete(request, request_id, chat=False)


@get(
    "/v1/chat/completions/{completion_id:str}",
    summary="A stored (or captured) chat completion",
    responses=_ERRORS,
    tags=["captures"],
)
async def retrieve_stored_completion(
    completion_id: str, request: Request[Any, Any, Any]
) -> StoredChatCompletion:
    return StoredChatCompletion.of(await _find(request, completion_id, chat=True))


@post(
    "/v1/chat/completions/{completion_id:str}",
    status_code=200,
    summary="Replace a stored (or captured) chat completion's metadata",
    responses=_ERRORS,
    tags=["captures"],
)
async def update_stored_completion(
    completion_id: str, data: MetadataUpdate, request: Request[Any, Any, Any]
) -> StoredChatCompletion:
    capture = await _find(request, completion_id, chat=True)
    capturer: Capturer = request.app.state.capturer
    metadata = dict(data.metadata or {})
    if not await asyncio.to_thread(capturer.store.set_metadata, completion_id, metadata):
        raise CaptureNotFoundError(_STORED, completion_id, "completion_id")  # removed meanwhile
    return StoredChatCompletion.of(dataclasses.replace(capture, metadata=metadata))


@delete(
    "/v1/chat/completions/{completion_id:str}",
    status_code=200,
    summary="Delete a stored (or captured) chat completion",
    responses=_ERRORS,
    tags=["captures"],
)
async def delete_stored_completion(completion_id: str, request: Request[Any, Any, Any]) -> Deleted:
    return await _delete(request, completion_id, chat=True)


@get(
    "/v1/chat/completions",
    summary="List stored (and captured) chat completions; filter by model and metadata",
    responses=_ERRORS,
    tags=["captures"],
)
async def list_stored_completions(
    request: Request[Any, Any, Any],
    model: str | None = None,
    after: str | None = None,
    limit: int = Parameter(default=20, ge=1, le=100),
    order: str = Parameter(default="asc", pattern="^(asc|desc)$"),
) -> StoredChatCompletionList:
    # The openai client sends `metadata={"k": "v"}` as the query parameter `metadata[k]=v`.
    wanted: dict[str, str] = {}
    for name, value in request.query_params.items():
        if name.startswith("metadata[") and name.endswith("]"):
            wanted[name[len("metadata[") : -1]] = value
    key = caller(request)
    capturer: Capturer = request.app.state.capturer
    await asyncio.to_thread(capturer.flush)
    owner = key.name if key is not None and not key.admin else None
    if after is not None:
        start = await asyncio.to_thread(capturer.store.get, after)
        if start is None or start.operation != "chat" or not _may_see(key, start):
            raise BadRequestError(f"after: no stored chat completion {after!r}", param="after")
    rows = await asyncio.to_thread(
        capturer.store.find,
        operation="chat",
        key_id=owner,
        metadata=wanted,
        model=model,
        after=after,
        descending=order == "desc",
        limit=limit + 1,  # one more tells whether there is a next page
    )
    page = [StoredChatCompletion.of(c) for c in rows[:limit]]
    return StoredChatCompletionList(
        data=page,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
        has_more=len(rows) > limit,
    )


CAPTURE_ROUTES = [
    get_capture,
    delete_capture,
    retrieve_stored_completion,
    update_stored_completion,
    delete_stored_completion,
    list_stored_completions,
]
