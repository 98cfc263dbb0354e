"""Prompt/response capture through the real app over a fake engine, with the real SQLite
file: nothing kept unless configured, kept per artifact rule or `store: true`, streams
assembled, retention, removal per request id, tenant scoping, OpenAI-shaped 400s."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from gateway.auth import KeyStore
from gateway.capture import Capture, CaptureConfig, CaptureStore, captures_path
from gateway.capture.capturer import Capturer
from gateway.capture.testing import sample_capture
from gateway.protocol import ErrorResponse
from gateway.testing import fake_app
from tunegate.config import ConfigError, Settings, load_settings

BASE = "tiny-random-llama"
DAY = 86400.0
MESSAGES = [
    {"role": "system", "content": "Route the ticket."},
    {"role": "user", "content": "my bill is wrong"},
]


@pytest.fixture
def settings(home: Path) -> Settings:
    settings = load_settings()
    settings.default_base = BASE
    return settings


def _capture_on(settings: Settings, pattern: str = BASE, days: float = 7.0) -> Settings:
    settings.gateway.capture.artifacts = [{"pattern": pattern, "retention_days": days}]
    return settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Any]]:
    app, _ = fake_app(settings)
    with TestClient(app) as client:
        yield client


def _chat(client: TestClient[Any], headers: dict[str, str] | None = None, **extra: Any) -> Any:
    body = {"model": BASE, "messages": MESSAGES, "max_tokens": 4, **extra}
    response = client.post("/v1/chat/completions", json=body, headers=headers or {})
    assert response.status_code == 200, response.text
    return response


def _rows(settings: Settings) -> list[dict[str, Any]]:
    path = captures_path(settings)
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM captures ORDER BY created_at")]
    finally:
        conn.close()


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    ErrorResponse.model_validate(response.json())
    return response.json()["error"]  # type: ignore[no-any-return]


def test_nothing_is_captured_unless_configured(client: TestClient[Any], settings: Settings) -> None:
    chat_id = _chat(client).headers["x-request-id"]
    streamed = client.post(
        "/v1/chat/completions",
        json={"model": BASE, "messages": MESSAGES, "max_tokens": 3, "stream": True},
    )
    assert streamed.status_code == 200
    text = client.post("/v1/completions", json={"model": BASE, "prompt": "a b", "max_tokens": 2})
    assert text.status_code == 200
    # `store: false` and metadata alone do not turn capture on either.
    _chat(client, store=False, metadata={"task": "routing"})
    client.get("/v1/usage")  # flushes accounting: the requests really were served
    assert _rows(settings) == []
    assert _error(client.get(f"/v1/captures/{chat_id}"), 404)["param"] == "request_id"
    assert client.get("/v1/chat/completions").json()["data"] == []


def test_a_configured_artifact_is_captured(settings: Settings) -> None:
    app, _ = fake_app(_capture_on(settings, days=2))
    with TestClient(app) as client:
        response = _chat(client, metadata={"task": "routing"})
        request_id = response.headers["x-request-id"]
        answer = response.json()["choices"][0]["message"]["content"]
        got = client.get(f"/v1/captures/{request_id}")
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["request"] == {"messages": MESSAGES}
        assert body["response"] == answer and answer
        assert (body["artifact"], body["model"], body["operation"]) == (BASE, BASE, "chat")
        assert body["stored"] is False and body["metadata"] == {"task": "routing"}
        assert body["usage"] == {
            k: v for k, v in response.json()["usage"].items() if k != "prompt_tokens_details"
        } | {"prompt_tokens_details": None}
        assert body["expires_at"] - body["created_at"] == pytest.approx(2 * DAY, abs=1)
        stored = client.get(f"/v1/chat/completions/{request_id}").json()
        assert stored["choices"][0]["message"]["content"] == answer
        text = client.post(
            "/v1/completions", json={"model": BASE, "prompt": "a b", "max_tokens": 2}
        )
        text_id = text.headers["x-request-id"]
        assert client.get(f"/v1/captures/{text_id}").json()["request"] == {"prompt": "a b"}
        # A text completion is a capture, not a chat completion.
        _error(client.get(f"/v1/chat/completions/{text_id}"), 404)
    assert [r["request_id"] for r in _rows(settings)] == [request_id, text_id]


def test_a_rule_for_another_artifact_captures_nothing(settings: Settings) -> None:
    app, _ = fake_app(_capture_on(settings, pattern="telecom"))
    with TestClient(app) as client:
        _chat(client)
    assert _rows(settings) == []


def test_store_true_is_captured_with_capture_off(
    client: TestClient[Any], settings: Settings
) -> None:
    request_id = _chat(client, store=True, metadata={"run": "a"}).headers["x-request-id"]
    _chat(client)  # not stored
    listed = client.get("/v1/chat/completions", params={"metadata[run]": "a"}).json()
    assert [c["id"] for c in listed["data"]] == [request_id]
    assert listed["data"][0]["metadata"] == {"run": "a"}
    assert client.get("/v1/chat/completions", params={"metadata[run]": "b"}).json()["data"] == []
    (row,) = _rows(settings)
    assert (row["request_id"], row["stored"]) == (request_id, 1)
    assert row["expires_at"] - row["created_at"] == pytest.approx(30 * DAY, abs=1)


def test_a_stream_is_captured_assembled(settings: Settings) -> None:
    app, _ = fake_app(_capture_on(settings))
    with TestClient(app) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": BASE, "messages": MESSAGES, "max_tokens": 5, "stream": True},
        )
        assert response.status_code == 200
        events = [
            json.loads(line[len("data: ") :])
            for line in response.text.splitlines()
            if line.startswith("data: {")
        ]
        streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
        request_id = response.headers["x-request-id"]
        assert client.get(f"/v1/captures/{request_id}").json()["response"] == streamed
    assert len(streamed.split()) == 5


def test_a_failed_stream_is_not_captured(settings: Settings) -> None:
    app, engines = fake_app(_capture_on(settings))
    with TestClient(app) as client:
        engines[BASE].knobs.fail_after = 2
        response = client.post(
            "/v1/chat/completions",
            json={"model": BASE, "messages": MESSAGES, "max_tokens": 5, "stream": True},
        )
        assert '"error"' in response.text
    assert _rows(settings) == []


def test_removal_per_request_id(settings: Settings) -> None:
    app, _ = fake_app(_capture_on(settings))
    with TestClient(app) as client:
        first = _chat(client).headers["x-request-id"]
        second = _chat(client).headers["x-request-id"]
        removed = client.delete(f"/v1/captures/{first}")
        assert removed.status_code == 200, removed.text
        assert removed.json() == {"id": first, "object": "capture.deleted", "deleted": True}
        _error(client.get(f"/v1/captures/{first}"), 404)
        _error(client.delete(f"/v1/captures/{first}"), 404)
        deleted = client.delete(f"/v1/chat/completions/{second}").json()
        assert deleted == {"id": second, "object": "chat.completion.deleted", "deleted": True}
    assert _rows(settings) == []


def test_a_key_sees_and_removes_only_its_own_captures(settings: Settings, home: Path) -> None:
    table = KeyStore(home / "keys.sqlite3")
    mine = {"Authorization": f"Bearer {table.create('mine', ['*'])[1]}"}
    theirs = {"Authorization": f"Bearer {table.create('theirs', ['*'])[1]}"}
    admin = {"Authorization": f"Bearer {table.create('ops', [], admin=True)[1]}"}
    app, _ = fake_app(_capture_on(settings))
    with TestClient(app) as client:
        request_id = _chat(client, mine, store=True).headers["x-request-id"]
        _error(client.get(f"/v1/captures/{request_id}"), 401)
        for path in (f"/v1/captures/{request_id}", f"/v1/chat/completions/{request_id}"):
            assert _error(client.get(path, headers=theirs), 404)["code"] == "not_found"
            _error(client.delete(path, headers=theirs), 404)
        assert client.get("/v1/chat/completions", headers=theirs).json()["data"] == []
        update = {"metadata": {"mine": "no"}}
        path = f"/v1/chat/completions/{request_id}"
        _error(client.post(path, json=update, headers=theirs), 404)
        mine_now = client.get(f"/v1/captures/{request_id}", headers=mine).json()
        assert mine_now["key_id"] == "mine" and mine_now["metadata"] == {}
        assert client.get(f"/v1/captures/{request_id}", headers=admin).status_code == 200
        assert len(client.get("/v1/chat/completions", headers=mine).json()["data"]) == 1
        removed = client.delete(f"/v1/captures/{request_id}", headers=mine)
        assert removed.status_code == 200, removed.text
    assert _rows(settings) == []


@pytest.mark.parametrize(
    ("metadata", "param", "words"),
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata", "at most 16 properties"),
        ({"k" * 65: "v"}, "metadata", "maximum length 64"),
        ({"k": "v" * 513}, "metadata", "maximum length 512"),
        ({"k": 1}, "metadata.k", "valid string"),
        (["k", "v"], "metadata", "dictionary"),
    ],
)
def test_bad_metadata_is_refused_and_nothing_kept(
    client: TestClient[Any], settings: Settings, metadata: Any, param: str, words: str
) -> None:
    body = {"model": BASE, "messages": MESSAGES, "store": True, "metadata": metadata}
    error = _error(client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert words in error["message"]
    assert _rows(settings) == []


def _capture(request_id: str, expires_at: float) -> Capture:
    return sample_capture(request_id, expires_at=expires_at, created_at=expires_at - 10)


def test_expired_captures_are_invisible_then_purged(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures.sqlite3")
    now = time.time()
    store.write([_capture("old", now - 1), _capture("new", now + 100)])
    assert store.get("old") is None  # past retention: never served, even before a purge
    assert [c.request_id for c in store.find()] == ["new"]
    assert store.purge(now) == 1
    assert store.purge(now) == 0
    assert store.purge(now + 101) == 1
    store.close()
    assert (tmp_path / "captures.sqlite3").stat().st_mode & 0o777 == 0o600


def test_the_gateway_purges_expired_captures_at_start_up(settings: Settings) -> None:
    store = CaptureStore(captures_path(settings))
    store.write([_capture("chatcmpl-old", time.time() - 1)])
    store.close()
    assert len(_rows(settings)) == 1
    app, _ = fake_app(settings)
    with TestClient(app):
        deadline = time.monotonic() + 10
        while _rows(settings) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _rows(settings) == []


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "captures.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 9")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this tunegate"):
        CaptureStore(path)


@pytest.mark.parametrize(
    ("rules", "artifact", "stored", "days"),
    [
        ([], "telecom@3", False, None),
        ([], "telecom@3", True, 30.0),
        ([{"pattern": "telecom", "retention_days": 5}], "telecom@3", False, 5.0),
        ([{"pattern": "telecom", "retention_days": 5}], "telecom@3", True, 30.0),
        ([{"pattern": "telecom", "retention_days": 90}], "telecom@3", True, 90.0),
        ([{"pattern": "telecom@2", "retention_days": 5}], "telecom@3", False, None),
        (
            [{"pattern": "telecom@3", "retention_days": 1}, {"pattern": "*", "retention_days": 9}],
            "telecom@3",
            False,
            1.0,
        ),
        ([{"pattern": "ft-*", "retention_days": 0.5}], "ft-abc@1", False, 0.5),
        ([{"pattern": "ft-*", "retention_days": 0.5}], "telecom@1", False, None),
        ([{"pattern": BASE, "retention_days": 2}], BASE, False, 2.0),
    ],
)
def test_which_rule_decides(
    tmp_path: Path, rules: list[dict[str, Any]], artifact: str, stored: bool, days: float | None
) -> None:
    capturer = Capturer(CaptureConfig(artifacts=rules), CaptureStore(tmp_path / "c.sqlite3"))
    try:
        retention = capturer.retention_s(artifact, stored)
    finally:
        capturer.close()
    assert retention == (None if days is None else days * DAY)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ('[{"pattern": "a"}]', "retention_days is required"),
        ('[{"pattern": "a", "retention_days": 0}]', "days > 0"),
        ('[{"pattern": "a", "retention_days": "week"}]', "days > 0"),
        ('[{"pattern": "a b", "retention_days": 1}]', "pattern must be"),
        ('[{"pattern": "a", "retention_days": 1, "keep": true}]', "unknown field"),
        ('["a"]', "must be a mapping"),
    ],
)
def test_bad_capture_config_is_refused(home: Path, value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_settings(env={"TUNEGATE_HOME": str(home), "TUNEGATE_GATEWAY_CAPTURE_ARTIFACTS": value})


def test_capture_config_from_the_environment(home: Path) -> None:
    settings = load_settings(
        env={
            "TUNEGATE_HOME": str(home),
            "TUNEGATE_GATEWAY_CAPTURE_ARTIFACTS": '[{"pattern": "alpha", "retention_days": 3}]',
            "TUNEGATE_GATEWAY_CAPTURE_STORED_RETENTION_DAYS": "1",
        }
    )
    assert [(r.pattern, r.retention_days) for r in settings.gateway.capture.rules()] == [
        ("alpha", 3.0)
    ]
    assert settings.gateway.capture.stored_retention_days == 1.0


def test_the_openai_client_stores_lists_retrieves_and_deletes(settings: Settings) -> None:
    import openai

    app, _ = fake_app(settings)
    with TestClient(app) as http:
        client = openai.OpenAI(base_url=f"{http.base_url}/v1", api_key="x", http_client=http)  # type: ignore[arg-type]
        made = client.chat.completions.create(
            model=BASE, messages=MESSAGES, max_tokens=3, store=True, metadata={"task": "routing"}
        )
        client.chat.completions.create(model=BASE, messages=MESSAGES, max_tokens=3)
        got = client.chat.completions.retrieve(made.id)
        assert got.choices[0].message.content == made.choices[0].message.content
        listed = client.chat.completions.list(metadata={"task": "routing"})
        assert [c.id for c in listed.data] == [made.id]
        assert client.chat.completions.list(metadata={"task": "other"}).data == []
        assert [c.id for c in client.chat.completions.list(model=BASE).data] == [made.id]
        updated = client.chat.completions.update(made.id, metadata={"task": "tagging"})
        assert updated.id == made.id and updated.metadata == {"task": "tagging"}  # type: ignore[attr-defined]
        assert client.chat.completions.list(metadata={"task": "routing"}).data == []
        assert [c.id for c in client.chat.completions.list(metadata={"task": "tagging"}).data] == [
            made.id
        ]
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.update(made.id, metadata={str(i): "v" for i in range(17)})
        assert client.chat.completions.retrieve(made.id).metadata == {"task": "tagging"}  # type: ignore[attr-defined]
        deleted = client.chat.completions.delete(made.id)
        assert (deleted.id, deleted.deleted, deleted.object) == (
            made.id,
            True,
            "chat.completion.deleted",
        )
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.retrieve(made.id)
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(
                model=BASE, messages=MESSAGES, store=True, metadata={"k" * 65: "v"}
            )
        assert bad.value.param == "metadata"  # type: ignore[attr-defined]
    assert _rows(settings) == []


def test_find_filters_in_sql(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures.sqlite3")
    t = time.time()
    odd = {'a "quoted".key': "x", "$.path": "y"}
    store.write(
        [
            sample_capture("c1", created_at=t - 5, metadata=odd),
            sample_capture("c2", created_at=t - 4, artifact="telecom@2", metadata={"a": "1"}),
            sample_capture("c3", created_at=t - 3, artifact=BASE, requested_model=BASE),
            sample_capture("c4", created_at=t - 2, artifact="telecom-x@1", requested_model="t"),
        ]
    )

    def ids(**kw: Any) -> list[str]:
        return [c.request_id for c in store.find(**kw)]

    assert ids(metadata=odd) == ["c1"]
    assert ids(metadata={'a "quoted".key': "x", "a": "1"}) == []
    assert ids(model="telecom") == ["c1", "c2"]  # a name: every version, not telecom-x
    assert ids(model="telecom@prod") == ["c1", "c2"]
    assert ids(model=BASE) == ids(artifact=BASE) == ["c3"]
    assert ids(artifact="telecom@prod") == []  # what answered, not what was asked
    assert ids(limit=2) == ["c1", "c2"]
    assert ids(after="c2") == ["c3", "c4"]
    assert ids(after="c3", descending=True) == ["c2", "c1"]
    with pytest.raises(LookupError):
        store.find(after="nope")
    store.close()


def test_listing_pages_like_openai(client: TestClient[Any]) -> None:
    made = [_chat(client, store=True).headers["x-request-id"] for _ in range(3)]
    first = client.get("/v1/chat/completions", params={"limit": 2}).json()
    assert [c["id"] for c in first["data"]] == made[:2] and first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == (made[0], made[1])
    rest = client.get("/v1/chat/completions", params={"limit": 2, "after": made[1]}).json()
    assert [c["id"] for c in rest["data"]] == made[2:] and rest["has_more"] is False
    newest = client.get("/v1/chat/completions", params={"order": "desc", "limit": 1}).json()
    assert [c["id"] for c in newest["data"]] == made[2:]
    assert _error(client.get("/v1/chat/completions", params={"after": "x"}), 400)["param"] == (
        "after"
    )
    _error(client.get("/v1/chat/completions", params={"limit": 0}), 400)
    _error(client.get("/v1/chat/completions", params={"order": "sideways"}), 400)


def test_a_removed_capture_is_gone_from_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "captures.sqlite3"
    store = CaptureStore(path)
    secret = "my-account-number-4242-1234"
    store.write([sample_capture("c1", response=secret), sample_capture("c2")])

    def on_disk() -> bool:
        files = [path, path.with_name(path.name + "-wal")]
        return any(secret.encode() in f.read_bytes() for f in files if f.exists())

    assert on_disk()
    assert store.delete("c1")
    assert not on_disk()
    assert store.get("c2") is not None
    store.close()
