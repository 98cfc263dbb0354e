"""`POST /v1/chat/completions`: render the conversation with the model's chat template."""

from __future__ import annotations

from typing import Any

from gateway.protocol import (
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
)
from gateway.routing import Target
from gateway.serving import ChunkFormat, GenerationServing, Tracker, sse

__all__ = ["ChatServing"]


class ChatServing(GenerationServing):
    operation = "chat"
    prompt_param = "messages"

    async def render(self, body: ChatCompletionRequest, target: Target) -> list[int]:
        return await target.engine.render_chat(body.conversation(target.system_prompt))

    def requested_max_tokens(self, body: ChatCompletionRequest) -> int | None:
        return body.requested_max_tokens

    def max_tokens_param(self, body: ChatCompletionRequest) -> str:
        return "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"

    def captured_request(self, body: ChatCompletionRequest) -> dict[str, Any]:
        return {"messages": [m.model_dump(exclude_none=True) for m in body.messages]}

    def response_body(self, tracker: Tracker, text: str, created: int) -> bytes:
        assert tracker.target is not None
        response = ChatCompletionResponse(
            id=tracker.request_id,
            created=created,
            model=tracker.target.artifact,
            choices=[
                ChatCompletionChoice(
                    message=ChatMessageOut(content=text), finish_reason=tracker.finish_reason
                )
            ],
            usage=tracker.usage(),
        )
        return response.model_dump_json().encode()

    def stream_chunks(self, tracker: Tracker, created: int) -> ChunkFormat:
        return _ChatChunks(tracker, created)


class _ChatChunks(ChunkFormat):
    """Chunks shaped as OpenAI sends them: the role first, then content deltas, then a
    chunk with the finish reason, then (if asked) one with usage and no choices."""

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        body = self._base("chat.completion.chunk")
        body["choices"] = [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ]
        return sse(body)

    def first(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def delta(self, text: str) -> bytes:
        return self._chunk({"content": text})

    def finish(self, reason: str | None) -> bytes:
        return self._chunk({}, reason)

    def usage(self) -> bytes:
        body = self._base("chat.completion.chunk")
        body["choices"] = []
        body["usage"] = self.usage_dict()
        return sse(body)
