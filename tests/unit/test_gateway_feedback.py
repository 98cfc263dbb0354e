"""`POST /v1/feedback` through the real app over a fake engine: stored beside the request's
accounting record, 404 for unknown ids and for other keys' requests, 400 for bad bodies."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from gateway.app import accounting_path
from gateway.auth import KeyStore
from gateway.protocol import ErrorResponse
from gateway.testing import fake_app
from tunegate.config import Settings, load_settings

BASE = "tiny-random-llama"


@pytest.fixture
def settings(home: Path) -> Settings:
    settings = load_settings()
    settings.default_base = BASE
    return settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Any]]:
    app, _ = fake_app(settings)
    with TestClient(app) as client:
        yield client


def _served(client: TestClient[Any], headers: dict[str, str] | None = None) -> str:
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    response = client.post("/v1/chat/completions", json=body, headers=headers or {})
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def _rows(settings: Settings) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(accounting_path(settings))
    try:
        return conn.execute(
            "SELECT f.request_id, f.rating, f.correction, r.artifact FROM feedback f"
            " JOIN requests r ON r.request_id = f.request_id ORDER BY f.created_at, f.rowid"
        ).fetchall()
    finally:
        conn.close()


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    ErrorResponse.model_validate(response.json())
    return response.json()["error"]  # type: ignore[no-any-return]


def test_feedback_is_stored_beside_the_request(client: TestClient[Any], settings: Settings) -> None:
    request_id = _served(client)
    rated = client.post("/v1/feedback", json={"request_id": request_id, "rating": -0.5})
    assert rated.status_code == 200, rated.text
    assert rated.json()["object"] == "feedback" and rated.json()["artifact"] == BASE
    assert rated.json()["id"].startswith("fb-")
    fixed = client.post(
        "/v1/feedback", json={"request_id": request_id, "correction": "billing", "rating": 1}
    )
    assert fixed.status_code == 200, fixed.text
    assert _rows(settings) == [
        (request_id, -0.5, None, BASE),
        (request_id, 1.0, "billing", BASE),
    ]

    error = _error(
        client.post("/v1/feedback", json={"request_id": "chatcmpl-nope", "rating": 1}), 404
    )
    assert (error["param"], error["code"]) == ("request_id", "request_not_found")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rating": 1}, "request_id"),
        ({"request_id": "x"}, None),
        ({"request_id": "x", "rating": 1.5}, "rating"),
        ({"request_id": "x", "rating": -2}, "rating"),
        ({"request_id": "x", "rating": "good"}, "rating"),
        ({"request_id": "x", "correction": ""}, "correction"),
        ({"request_id": "x", "rating": 1, "comment": "extra"}, "comment"),
    ],
)
def test_bad_feedback_is_refused_and_nothing_stored(
    client: TestClient[Any], settings: Settings, body: dict[str, Any], param: str | None
) -> None:
    request_id = _served(client)
    body = {**body, "request_id": request_id} if "request_id" in body else body
    error = _error(client.post("/v1/feedback", json=body), 400)
    assert error["param"] == param
    assert _rows(settings) == []


def test_feedback_only_for_the_key_that_made_the_request(settings: Settings, home: Path) -> None:
    table = KeyStore(home / "keys.sqlite3")
    _, mine = table.create("mine", ["*"])
    _, theirs = table.create("theirs", ["*"])
    app, _ = fake_app(settings)
    with TestClient(app) as client:
        request_id = _served(client, {"Authorization": f"Bearer {mine}"})
        body = {"request_id": request_id, "rating": 1}
        _error(client.post("/v1/feedback", json=body), 401)
        other = client.post(
            "/v1/feedback", json=body, headers={"Authorization": f"Bearer {theirs}"}
        )
        assert _error(other, 404)["code"] == "request_not_found"
        own = client.post("/v1/feedback", json=body, headers={"Authorization": f"Bearer {mine}"})
        assert own.status_code == 200, own.text
    assert _rows(settings) == [(request_id, 1.0, None, BASE)]
