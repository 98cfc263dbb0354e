"""The OpenAI surface through the real app over a fake engine: shapes, errors, streaming."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from gateway.protocol import (
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    CompletionResponse,
    ErrorResponse,
    ModelList,
)
from gateway.testing import FakeEngine, fake_app
from tunegate.config import load_settings

BASE = "tiny-random-llama"
USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def gateway(home: Path) -> Iterator[tuple[TestClient[Any], FakeEngine]]:
    settings = load_settings()
    settings.default_base = BASE
    settings.gateway.engine.max_model_len = 64
    app, engines = fake_app(settings)
    with TestClient(app) as client:
        yield client, engines[BASE]


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = ErrorResponse.model_validate(response.json())  # exactly the OpenAI shape
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    return body.error.model_dump()


def _events(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# (body overrides, expected param) for bodies the schema refuses.
INVALID_CHAT = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.[0].role"),
    ({"messages": [{"role": "user"}]}, "messages.[0].content"),
    ({"messages": "hello"}, "messages"),
    ({"model": ""}, "model"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": -3}, "max_completion_tokens"),
    ({"n": 2}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"logprobs": True}, "logprobs"),
    ({"stream_options": {"include_usage": "maybe"}}, "stream_options.include_usage"),
]


@pytest.mark.parametrize(("override", "param"), INVALID_CHAT)
def test_invalid_chat_bodies_are_400_with_param(
    gateway: tuple[TestClient[Any], FakeEngine], override: dict[str, Any], param: str
) -> None:
    client, engine = gateway
    body = {"model": BASE, "messages": USER, **override}
    error = _error(client.post("/v1/chat/completions", json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert engine.calls == []


@pytest.mark.parametrize(
    ("override", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"echo": True}, "echo"),
        ({"suffix": "x"}, "suffix"),
        ({"best_of": 2}, "best_of"),
    ],
)
def test_invalid_completion_bodies_are_400_with_param(
    gateway: tuple[TestClient[Any], FakeEngine], override: dict[str, Any], param: str
) -> None:
    client, _ = gateway
    body = {"model": BASE, "prompt": "hi", **override}
    assert _error(client.post("/v1/completions", json=body), 400)["param"] == param


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b'"text"', b'{"model": "x"}'])
def test_malformed_bodies_are_400(gateway: tuple[TestClient[Any], FakeEngine], raw: bytes) -> None:
    client, _ = gateway
    response = client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    _error(response, 400)


def test_unknown_model_is_404_on_model(gateway: tuple[TestClient[Any], FakeEngine]) -> None:
    client, engine = gateway
    response = client.post("/v1/chat/completions", json={"model": "nope", "messages": USER})
    error = _error(response, 404)
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    assert response.headers["x-request-id"].startswith("chatcmpl-")
    assert engine.calls == []


def test_context_overflow_is_400_before_the_engine(
    gateway: tuple[TestClient[Any], FakeEngine],
) -> None:
    client, engine = gateway
    long = [{"role": "user", "content": "word " * 40}]  # 45 prompt tokens of 64
    body = {"model": BASE, "messages": long, "max_completion_tokens": 30}
    error = _error(client.post("/v1/chat/completions", json=body), 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "max_completion_tokens")
    assert "45 in the messages, 30 in the completion" in error["message"]
    too_long = [{"role": "user", "content": "word " * 80}]
    error = _error(
        client.post("/v1/chat/completions", json={"model": BASE, "messages": too_long}), 400
    )
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert engine.calls == []
    # Without max_tokens the completion gets what is left of the context.
    ok = client.post("/v1/chat/completions", json={"model": BASE, "messages": long})
    assert ok.status_code == 200
    assert engine.calls[-1].params.max_tokens == 64 - 45


def test_chat_completion_shape_and_headers(gateway: tuple[TestClient[Any], FakeEngine]) -> None:
    client, engine = gateway
    body = {
        "model": BASE,
        "messages": USER,
        "max_tokens": 4,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 7,
        "stop": "never",
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    parsed = ChatCompletionResponse.model_validate(response.json())
    assert parsed.id == response.headers["x-request-id"]
    assert response.headers["x-tunegate-artifact"] == BASE == parsed.model
    assert parsed.choices[0].message.content == f"{BASE} 0 1 2"
    assert parsed.choices[0].finish_reason == "length"
    assert parsed.usage.completion_tokens == 4
    assert parsed.usage.prompt_tokens == len(engine.calls[-1].prompt)
    params = engine.calls[-1].params
    assert (params.temperature, params.top_p, params.seed, params.stop) == (
        0.5,
        0.9,
        7,
        ("never",),
    )
    assert params.stream is False


def test_max_completion_tokens_wins_over_max_tokens(
    gateway: tuple[TestClient[Any], FakeEngine],
) -> None:
    client, engine = gateway
    body = {"model": BASE, "messages": USER, "max_tokens": 9, "max_completion_tokens": 3}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert engine.calls[-1].params.max_tokens == 3


def test_stop_sequence_ends_with_stop(gateway: tuple[TestClient[Any], FakeEngine]) -> None:
    client, _ = gateway
    body = {"model": BASE, "messages": USER, "max_tokens": 10, "stop": [" 2"]}
    choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (f"{BASE} 0 1", "stop")


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_stream(gateway: tuple[TestClient[Any], FakeEngine], include_usage: bool) -> None:
    client, _ = gateway
    body = {
        "model": BASE,
        "messages": USER,
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": include_usage},
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionStreamResponse.model_validate(e) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"{BASE} 0 1"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    usage = [c.usage for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage) == 1 and chunks[-1].choices == []
        assert usage[0].completion_tokens == 3
    else:
        assert usage == []
    assert {c.id for c in chunks} == {response.headers["x-request-id"]}


def test_stream_options_without_stream_is_400(
    gateway: tuple[TestClient[Any], FakeEngine],
) -> None:
    client, _ = gateway
    body = {"model": BASE, "messages": USER, "stream_options": {"include_usage": True}}
    assert _error(client.post("/v1/chat/completions", json=body), 400)["param"] == (
        "stream_options"
    )


def test_failure_after_stream_start_is_an_error_event_then_done(
    gateway: tuple[TestClient[Any], FakeEngine],
) -> None:
    client, engine = gateway
    engine.knobs.fail_after = 2
    body = {"model": BASE, "messages": USER, "max_tokens": 8, "stream": True}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    events = _events(response.text)
    assert events[-1] == "[DONE]"
    error = ErrorResponse.model_validate(events[-2]).error
    assert error.type == "server_error"
    assert "fake engine failure" not in error.message  # internals stay in the log
    assert "Traceback" not in response.text


def test_failure_without_stream_is_500_without_internals(
    gateway: tuple[TestClient[Any], FakeEngine],
) -> None:
    client, engine = gateway
    engine.knobs.fail_after = 1
    response = client.post("/v1/chat/completions", json={"model": BASE, "messages": USER})
    error = _error(response, 500)
    assert error["type"] == "server_error"
    assert "fake engine failure" not in error["message"]


def test_completions(gateway: tuple[TestClient[Any], FakeEngine]) -> None:
    client, engine = gateway
    response = client.post("/v1/completions", json={"model": BASE, "prompt": "a b c"})
    parsed = CompletionResponse.model_validate(response.json())
    assert parsed.choices[0].text == f"{BASE} " + " ".join(str(i) for i in range(15))
    assert parsed.usage is not None and parsed.usage.completion_tokens == 16  # OpenAI default
    ids = client.post("/v1/completions", json={"model": BASE, "prompt": [[5, 6, 7]]})
    assert ids.status_code == 200 and engine.calls[-1].prompt == [5, 6, 7]
    bad = client.post("/v1/completions", json={"model": BASE, "prompt": [5, 10**6]})
    assert _error(bad, 400)["param"] == "prompt"
    stream = client.post(
        "/v1/completions",
        json={"model": BASE, "prompt": "x", "max_tokens": 2, "stream": True},
    )
    events = _events(stream.text)
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == f"{BASE} 0"
    assert events[-1] == "[DONE]"


def test_models_and_openapi(gateway: tuple[TestClient[Any], FakeEngine]) -> None:
    client, _ = gateway
    models = ModelList.model_validate(client.get("/v1/models").json())
    assert [(m.id, m.kind, m.parent) for m in models.data] == [(BASE, "base", None)]
    assert client.get(f"/v1/models/{BASE}").json()["id"] == BASE
    _error(client.get("/v1/models/nope"), 404)
    schema = client.get("/schema/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/usage"} <= set(
        schema["paths"]
    )
    _error(client.get("/v1/nothing"), 404)
    # GET lists stored chat completions (gateway/capture); PUT is no route's method.
    _error(client.put("/v1/chat/completions"), 405)


def test_health(gateway: tuple[TestClient[Any], FakeEngine]) -> None:
    client, _ = gateway
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["engines"][BASE] == {"healthy": True, "running": 0}
