"""A fake vLLM OpenAI server replica for httpx's MockTransport (no process, no network).

It answers what the gateway's replica code uses, the way vLLM's server does
(vllm/entrypoints/serve/lora/api_router.py, openai/models/serving.py, serve/tokenize):
runtime adapter load/unload with their 400/404 cases, `/health`, `/tokenize`, streamed
`/v1/completions` with `return_token_ids` and a final usage chunk, and chat completions; a
request for an adapter it does not hold gets vLLM's 404.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import pytest

    from tunegate.config import Settings

__all__ = ["BASE", "FakeReplica", "gateway_over_fakes"]

BASE = "base-model"
MAX_MODEL_LEN = 512


def _token(word: str) -> int:
    return 3 + zlib.crc32(word.encode()) % 997


def gateway_over_fakes(
    monkeypatch: pytest.MonkeyPatch, urls: list[str], base: str, env: dict[str, str] | None = None
) -> tuple[Settings, dict[str, FakeReplica]]:
    """Settings for a gateway whose `gateway.replicas.urls` are `urls`, each replica's
    connection going to its fake instead of the network (the one seam faked)."""
    from gateway.replicas import remote_engine
    from gateway.replicas.client import ReplicaClient
    from tunegate.config import load_settings

    fakes = {url: FakeReplica(url, base=base) for url in urls}
    monkeypatch.setattr(
        remote_engine,
        "ReplicaClient",
        lambda url, **kw: ReplicaClient(url, transport=fakes[url].transport(), **kw),
    )
    settings = load_settings(env={"TUNEGATE_GATEWAY_REPLICAS_URLS": ",".join(urls), **(env or {})})
    settings.default_base = base
    return settings, fakes


class FakeReplica:
    def __init__(self, url: str, base: str = BASE) -> None:
        self.url = url
        self.base = base
        self.loaded: dict[str, str] = {}
        self.healthy = True
        self.refusing = False  # connection refused: the process is gone
        # Raised for every request: the connection is dropped (or times out) before any answer.
        self.failing: type[httpx.TransportError] | None = None
        self.cut_after: int | None = None  # completion chunks sent before the connection dies
        self.load_delay_s = 0.0
        self.calls: list[tuple[str, str]] = []  # (path, model or lora_name)
        self.bodies: list[dict[str, Any]] = []

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def served(self, path: str = "/v1/chat/completions") -> list[str]:
        return [model for called, model in self.calls if called == path]

    @staticmethod
    def _error(status: int, message: str) -> httpx.Response:
        return httpx.Response(status, json={"error": {"message": message, "code": status}})

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.refusing:
            raise httpx.ConnectError("connection refused", request=request)
        if self.failing is not None:
            raise self.failing("no answer", request=request)
        path = request.url.path
        if path == "/health":
            self.calls.append((path, ""))
            return httpx.Response(200 if self.healthy else 503)
        body = json.loads(request.content)
        self.bodies.append(body)
        if path == "/v1/load_lora_adapter":
            return await self._load(body)
        if path == "/v1/unload_lora_adapter":
            self.calls.append((path, body["lora_name"]))
            if self.loaded.pop(body["lora_name"], None) is None:
                return self._error(404, "cannot be found")
            return httpx.Response(200, text="Success")
        self.calls.append((path, body.get("model", "")))
        if path == "/tokenize":
            return self._tokenize(body)
        if body["model"] != self.base and body["model"] not in self.loaded:
            return self._error(404, f"The model `{body['model']}` does not exist.")
        if path == "/v1/completions":
            if body.get("temperature", 0) < 0:
                return self._error(400, "temperature must be non-negative")
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                content=self._completion_events(body),
            )
        answer = {"model": body["model"], "replica": self.url}
        if body.get("stream"):
            chunks = [f"data: {json.dumps(answer)}\n\n", "data: [DONE]\n\n"]
            return httpx.Response(200, content="".join(chunks).encode())
        return httpx.Response(200, json=answer)

    async def _load(self, body: dict[str, Any]) -> httpx.Response:
        self.calls.append(("/v1/load_lora_adapter", body["lora_name"]))
        await asyncio.sleep(self.load_delay_s)
        if body["lora_name"] in self.loaded:
            return self._error(
                400,
                f"The lora adapter '{body['lora_name']}' has already been loaded. If you "
                "want to load the adapter in place, set 'load_inplace' to True.",
            )
        if "missing" in body["lora_path"]:
            return self._error(404, "Loading lora failed: No adapter found")
        self.loaded[body["lora_name"]] = body["lora_path"]
        return httpx.Response(200, text="Success")

    def _tokenize(self, body: dict[str, Any]) -> httpx.Response:
        if "messages" in body:
            tokens = [1]
            for message in body["messages"]:
                if message["role"] not in ("system", "user", "assistant"):
                    return self._error(400, f"unknown role {message['role']!r}")
                tokens += [_token(message["role"])]
                tokens += [_token(w) for w in message["content"].split()]
            tokens += [_token("assistant")] if body.get("add_generation_prompt") else []
        else:
            tokens = [1] + [_token(w) for w in body["prompt"].split()]
        return httpx.Response(
            200, json={"count": len(tokens), "max_model_len": MAX_MODEL_LEN, "tokens": tokens}
        )

    async def _completion_events(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """`model 0 1 2 ...` up to max_tokens, one token per chunk, then usage."""
        words = [body["model"], *(str(i) for i in range(body["max_tokens"]))]
        words = words[: body["max_tokens"]]
        for i, word in enumerate(words):
            if self.cut_after is not None and i >= self.cut_after:
                raise httpx.ReadError("connection reset by peer")
            last = i == len(words) - 1
            choice = {
                "index": 0,
                "text": word if i == 0 else " " + word,
                "token_ids": [_token(word)],
                "finish_reason": "length" if last else None,
            }
            yield f"data: {json.dumps({'choices': [choice], 'usage': None})}\n\n".encode()
        usage = {
            "prompt_tokens": len(body["prompt"]),
            "completion_tokens": len(words),
            "prompt_tokens_details": {"cached_tokens": 0},
        }
        yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
        yield b"data: [DONE]\n\n"
