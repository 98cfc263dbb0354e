"""Response objects of the capture routes and of OpenAI's stored chat completions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from gateway.capture.store import Capture
from gateway.errors import APIError
from gateway.protocol import (
    ChatCompletionChoice,
    ChatCompletionResponse,
    ChatMessageOut,
    CompletionUsage,
    check_metadata,
)

__all__ = [
    "CaptureNotFoundError",
    "CaptureObject",
    "Deleted",
    "MetadataUpdate",
    "StoredChatCompletion",
    "StoredChatCompletionList",
]


class CaptureNotFoundError(APIError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"

    def __init__(self, what: str, request_id: str, param: str) -> None:
        super().__init__(f"No {what} with id {request_id!r} was found.", param=param)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _usage(capture: Capture) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=capture.prompt_tokens,
        completion_tokens=capture.completion_tokens,
        total_tokens=capture.prompt_tokens + capture.completion_tokens,
    )


class CaptureObject(_Response):
    """One captured request (`GET /v1/captures/{request_id}`)."""

    id: str
    object: Literal["capture"] = "capture"
    created_at: int
    expires_at: int
    operation: str
    model: str  # as requested
    artifact: str  # what answered
    key_id: str | None
    request: dict[str, Any]
    system_prompt: str | None
    response: str
    finish_reason: str | None
    usage: CompletionUsage
    stored: bool
    metadata: dict[str, str]

    @classmethod
    def of(cls, capture: Capture) -> CaptureObject:
        return cls(
            id=capture.request_id,
            created_at=int(capture.created_at),
            expires_at=int(capture.expires_at),
            operation=capture.operation,
            model=capture.requested_model,
            artifact=capture.artifact,
            key_id=capture.key_id,
            request=dict(capture.request),
            system_prompt=capture.system_prompt,
            response=capture.response,
            finish_reason=capture.finish_reason,
            usage=_usage(capture),
            stored=capture.stored,
            metadata=dict(capture.metadata),
        )


class StoredChatCompletion(ChatCompletionResponse):
    """A captured chat completion as OpenAI returns a stored one (with its metadata)."""

    metadata: dict[str, str]

    @classmethod
    def of(cls, capture: Capture) -> StoredChatCompletion:
        return cls(
            id=capture.request_id,
            created=int(capture.created_at),
            model=capture.artifact,
            choices=[
                ChatCompletionChoice(
                    message=ChatMessageOut(content=capture.response),
                    finish_reason=capture.finish_reason,
                )
            ],
            usage=_usage(capture),
            metadata=dict(capture.metadata),
        )


class StoredChatCompletionList(_Response):
    object: Literal["list"] = "list"
    data: list[StoredChatCompletion]
    first_id: str | None
    last_id: str | None
    has_more: bool


class MetadataUpdate(BaseModel):
    """`POST /v1/chat/completions/{id}`: the new metadata (null clears it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metadata: dict[str, str] | None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)


class Deleted(_Response):
    id: str
    object: Literal["capture.deleted", "chat.completion.deleted"]
    deleted: bool
