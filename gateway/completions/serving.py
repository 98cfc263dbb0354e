"""`POST /v1/completions`: a raw prompt (text or token ids), no chat template."""

from __future__ import annotations

from typing import Any

from gateway.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
)
from gateway.routing import Target
from gateway.serving import ChunkFormat, GenerationServing, Tracker, sse

__all__ = ["CompletionServing"]


class CompletionServing(GenerationServing):
    operation = "text_completion"
    prompt_param = "prompt"

    async def render(self, body: CompletionRequest, target: Target) -> list[int]:
        return await target.engine.render_text(body.single_prompt)

    def captured_request(self, body: CompletionRequest) -> dict[str, Any]:
        return {"prompt": body.single_prompt}

    def response_body(self, tracker: Tracker, text: str, created: int) -> bytes:
        assert tracker.target is not None
        response = CompletionResponse(
            id=tracker.request_id,
            created=created,
            model=tracker.target.artifact,
            choices=[CompletionChoice(text=text, finish_reason=tracker.finish_reason)],
            usage=tracker.usage(),
        )
        return response.model_dump_json().encode()

    def stream_chunks(self, tracker: Tracker, created: int) -> ChunkFormat:
        return _TextChunks(tracker, created)


class _TextChunks(ChunkFormat):
    def _chunk(self, text: str, finish_reason: str | None = None) -> bytes:
        body = self._base("text_completion")
        body["choices"] = [
            {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        ]
        return sse(body)

    def first(self) -> bytes:
        # Text completions have no role to announce; the first event is the first text.
        return b""

    def delta(self, text: str) -> bytes:
        return self._chunk(text)

    def finish(self, reason: str | None) -> bytes:
        return self._chunk("", reason)

    def usage(self) -> bytes:
        body: dict[str, Any] = self._base("text_completion")
        body["choices"] = []
        body["usage"] = self.usage_dict()
        return sse(body)
