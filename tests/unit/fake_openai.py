"""A scripted OpenAI-compatible chat server over real HTTP, for the load generator's tests.

The reply depends on the last user message: `fail-500`/`fail-429` answer with that status
and an OpenAI error body, `stream-error` breaks a stream after its first token, anything
`json-instead` answers a stream request with plain JSON, anything else answers
`billing_dispute` in three chunks with a fixed delay. Every request is
recorded so a test can check what the client really sent.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from litestar import Litestar, Request, post
from litestar.response import Response, Stream

ANSWER = ["billing", "_dis", "pute"]
TOKEN_DELAY_S = 0.01


def make_app(seen: list[dict[str, Any]]) -> Litestar:
    # The union return type matters: with `Any`, litestar stamps every response JSON.
    @post("/v1/chat/completions", status_code=200)
    async def chat(request: Request[Any, Any, Any]) -> Response[Any] | Stream:
        body = await request.json()
        seen.append(body)
        last = body["messages"][-1]["content"]
        if last.startswith("fail-"):
            status = int(last.split("-")[1])
            error = {
                "message": f"scripted {status}",
                "type": f"scripted_{status}",
                "param": None,
                "code": None,
            }
            return Response(
                {"error": error},
                status_code=status,
                headers={"retry-after": "1"} if status == 429 else None,
            )
        prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(ANSWER),
            "total_tokens": prompt_tokens + len(ANSWER),
        }
        headers = {"x-request-id": f"req-{len(seen)}", "x-tunegate-artifact": body["model"]}
        if not body.get("stream") or last == "json-instead":
            await asyncio.sleep(TOKEN_DELAY_S * len(ANSWER))
            message = {"role": "assistant", "content": "".join(ANSWER)}
            return Response(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                },
                headers=headers,
            )

        async def events() -> AsyncIterator[str]:
            for i, piece in enumerate(ANSWER):
                await asyncio.sleep(TOKEN_DELAY_S)
                if last == "stream-error" and i == 1:
                    err = {
                        "message": "engine died",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                    yield f"data: {json.dumps({'error': err})}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                finish = "stop" if i == len(ANSWER) - 1 else None
                chunk = {
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": finish}]
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            if body.get("stream_options", {}).get("include_usage"):
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return Stream(events(), media_type="text/event-stream", headers=headers)

    return Litestar([chat])


@contextmanager
def fake_openai_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(seen), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("fake server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()
