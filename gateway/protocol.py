"""The OpenAI surface the gateway speaks: request and response models, one error model.

Fields are in the order of the OpenAI API reference. Requests refuse unknown fields (OpenAI
answers "Unrecognized request argument supplied") so that a client asking for something the
gateway does not do (tools, logprobs, n > 1, ...) gets a 400 naming the field instead of a
silently different answer.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ChatCompletionChoice",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatCompletionStreamChoice",
    "ChatCompletionStreamResponse",
    "ChatMessage",
    "CompletionChoice",
    "CompletionRequest",
    "CompletionResponse",
    "CompletionUsage",
    "DeltaMessage",
    "ErrorBody",
    "ErrorResponse",
    "ModelCard",
    "ModelList",
    "PromptTokensDetails",
    "StreamOptions",
    "TextContentPart",
    "UsageGroup",
    "UsageReport",
    "check_metadata",
]

# Generous but bounded: a request can never make the server allocate without limit.
_MAX_STOP = 4
_MAX_MESSAGES = 4096
_MAX_METADATA, _MAX_METADATA_KEY, _MAX_METADATA_VALUE = 16, 64, 512


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- errors


class ErrorBody(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    error: ErrorBody


# ----------------------------------------------------------------------------- shared


class StreamOptions(_Request):
    include_usage: bool = False


class PromptTokensDetails(_Response):
    cached_tokens: int = 0


class CompletionUsage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


def _check_stop(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else list(value)
    if len(stops) > _MAX_STOP:
        raise ValueError(f"at most {_MAX_STOP} stop sequences are allowed")
    if any(not s for s in stops):
        raise ValueError("stop sequences must not be empty")
    return stops


class _Sampling(_Request):
    """Sampling fields shared by both generation endpoints (validated identically)."""

    # vLLM's own extra sampling parameters, as its OpenAI server accepts them (OpenAI
    # clients send them through `extra_body`): benchmarks and load tests need answers of
    # a fixed length, whatever the model would have stopped at.
    ignore_eos: bool | None = None
    min_tokens: Annotated[int | None, Field(ge=0)] = None

    @field_validator("n", check_fields=False)
    @classmethod
    def _only_one_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop", check_fields=False)
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        _check_stop(value)
        return value

    @property
    def stop_list(self) -> list[str]:
        return _check_stop(getattr(self, "stop", None))


# ----------------------------------------------------------------------------- chat


class TextContentPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    """A request message. Tool and function messages need tools, which are not served."""

    role: Literal["developer", "system", "user", "assistant"]
    content: str | list[TextContentPart]
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


def check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's metadata rules, with OpenAI's wording (a ValueError: a 400 naming `metadata`)."""
    # OpenAI's limits and wording: 16 pairs, keys <= 64 chars, values <= 512 chars.
    if value is None:
        return value
    if len(value) > _MAX_METADATA:
        raise ValueError(
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{_MAX_METADATA} properties, but got an object with {len(value)} properties "
            "instead."
        )
    for key, item in value.items():
        for what, text, limit in (
            ("key", key, _MAX_METADATA_KEY),
            ("value", item, _MAX_METADATA_VALUE),
        ):
            if len(text) > limit:
                raise ValueError(
                    f"Invalid 'metadata': {what} {text[:20]!r}... is too long. Expected "
                    f"a string with maximum length {limit}, but got a string with length "
                    f"{len(text)} instead."
                )
    return value


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=_MAX_MESSAGES)]
    model: Annotated[str, Field(min_length=1, max_length=256)]
    frequency_penalty: Annotated[float | None, Field(ge=-2.0, le=2.0)] = None
    max_completion_tokens: Annotated[int | None, Field(ge=1)] = None
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    # Kept with the completion when it is stored or captured (filters `data from-stored`).
    metadata: dict[str, str] | None = None
    n: int | None = None
    presence_penalty: Annotated[float | None, Field(ge=-2.0, le=2.0)] = None
    seed: int | None = None
    stop: str | list[str] | None = None
    # OpenAI's stored completions: keep this request and its answer (gateway.capture).
    store: bool | None = False
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float | None, Field(ge=0.0, le=2.0)] = None
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    user: str | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)

    @property
    def requested_max_tokens(self) -> int | None:
        # `max_completion_tokens` replaces the deprecated `max_tokens`; it wins when both come.
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def conversation(self, default_system: str | None) -> list[dict[str, str]]:
        """Messages as the chat template takes them, with the artifact's system prompt
        inserted first when the caller sent no system (or developer) message."""
        out = [{"role": _template_role(m.role), "content": m.text} for m in self.messages]
        if default_system and not any(m["role"] == "system" for m in out):
            out.insert(0, {"role": "system", "content": default_system})
        return out


def _template_role(role: str) -> str:
    # OpenAI's "developer" role is the newer name for "system"; chat templates know "system".
    return "system" if role == "developer" else role


class ChatMessageOut(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: None = None


class ChatCompletionChoice(_Response):
    index: int = 0
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: str | None


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    system_fingerprint: str | None = None
    usage: CompletionUsage


class DeltaMessage(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionStreamChoice(_Response):
    index: int = 0
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionStreamResponse(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    system_fingerprint: str | None = None
    usage: CompletionUsage | None = None


# ----------------------------------------------------------------------------- completions


class CompletionRequest(_Sampling):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    # One prompt per request: text or token ids (a one-element batch is accepted too).
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool | None = False
    frequency_penalty: Annotated[float | None, Field(ge=-2.0, le=2.0)] = None
    max_tokens: Annotated[int | None, Field(ge=1)] = 16
    n: int | None = None
    presence_penalty: Annotated[float | None, Field(ge=-2.0, le=2.0)] = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float | None, Field(ge=0.0, le=2.0)] = None
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    user: str | None = None

    @field_validator("prompt")
    @classmethod
    def _single_prompt(
        cls, value: str | list[int] | list[str] | list[list[int]]
    ) -> str | list[int] | list[str] | list[list[int]]:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be empty")
            if isinstance(value[0], list | str) and len(value) != 1:
                raise ValueError("only one prompt per request is supported")
            if isinstance(value[0], list) and not value[0]:
                raise ValueError("prompt must not be empty")
        elif not value:
            raise ValueError("prompt must not be empty")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("echo is not supported")
        return value

    @property
    def single_prompt(self) -> str | list[int]:
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], list | str):
            return p[0]  # type: ignore[return-value]
        return p  # type: ignore[return-value]


class CompletionChoice(_Response):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None


class CompletionResponse(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str | None = None
    usage: CompletionUsage | None = None


# ----------------------------------------------------------------------------- models


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunegate"
    # Extensions (OpenAI clients ignore unknown fields): what the id serves.
    parent: str | None = None
    root: str | None = None
    kind: Literal["base", "lora", "model"]
    max_model_len: int | None = None


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ----------------------------------------------------------------------------- usage


class UsageGroup(_Response):
    group: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    total_tokens: int
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    ttft_ms_p50: float | None
    ttft_ms_p95: float | None
    cost_usd: float


class UsageReport(_Response):
    object: Literal["usage.report"] = "usage.report"
    group_by: Literal["artifact", "key", "model"]
    since: float | None
    until: float | None
    data: list[UsageGroup]
