"""Keys, tenant scopes, rate limits, bounded admission and faults through the real app over
a fake engine (the engine seam), with a real store and a real key table."""

from __future__ import annotations

import asyncio
import contextlib
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from adapters_store import BaseModel, BaseRegistry, Store
from adapters_store.testing import write_lora
from gateway.auth import KeyRing, KeyStore, KeyTableError, sha256_hex
from gateway.auth.config import AuthConfig
from gateway.auth.limits import reset_duration
from gateway.protocol import ErrorResponse
from gateway.testing import FakeEngine, fake_app
from tunegate.config import Settings, load_settings

BASE = "tiny-random-llama"
USER = [{"role": "user", "content": "hello there"}]
RATE_HEADERS = ("limit", "remaining", "reset")


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    ErrorResponse.model_validate(response.json())  # exactly the OpenAI shape
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    return response.json()["error"]  # type: ignore[no-any-return]


def _chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER, "max_tokens": 4, **extra}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ----------------------------------------------------------------------------- key table


def test_key_table_stores_a_salted_digest_and_revokes(tmp_path: Path) -> None:
    table = KeyStore(tmp_path / "keys.sqlite3")
    key, secret = table.create("acme", ["alpha", "beta"], rpm=10)
    assert secret.startswith("sk-tg-") and len(secret) > 50
    assert secret.split("-", 3)[3] not in (tmp_path / "keys.sqlite3").read_bytes().decode("latin-1")
    assert stat.S_IMODE((tmp_path / "keys.sqlite3").stat().st_mode) == 0o600
    _, other = table.create("globex", ["*"])

    async def check(ring: KeyRing) -> list[str | None]:
        found = [await ring.verify(t) for t in (secret, other, secret[:-1] + "x", "sk-tg-")]
        return [k.name if k else None for k in found]

    ring = KeyRing(table, [], poll_s=0.01)
    assert asyncio.run(check(ring)) == ["acme", "globex", None, None]
    assert key.allows("alpha") and not key.allows("gamma")
    table.revoke("acme")
    time.sleep(0.02)
    assert asyncio.run(check(ring)) == [None, "globex", None, None]
    assert [k.name for k in table.list_keys()] == ["globex"]
    assert [k.name for k in table.list_keys(include_revoked=True)] == ["acme", "globex"]
    with pytest.raises(KeyTableError, match="exists already"):
        table.create("acme", ["alpha"])
    with pytest.raises(KeyTableError, match="no active key"):
        table.revoke("acme")


@pytest.mark.parametrize(
    ("name", "adapters", "rpm", "match"),
    [
        ("Bad Name", ["a"], None, "key name"),
        ("ok", [], None, "needs --adapters"),
        ("ok", ["../etc"], None, "not a valid artifact name"),
        ("ok", ["a"], 0, "rpm"),
    ],
)
def test_key_table_refuses_bad_keys(
    tmp_path: Path, name: str, adapters: list[str], rpm: int | None, match: str
) -> None:
    with pytest.raises(KeyTableError, match=match):
        KeyStore(tmp_path / "k.sqlite3").create(name, adapters, rpm=rpm)


def test_configured_key_matches_its_sha256(tmp_path: Path) -> None:
    token = "sk-my-own-long-random-key-0123456789"
    config = AuthConfig(keys=[{"name": "ops", "sha256": sha256_hex(token), "admin": True}])
    ring = KeyRing(KeyStore(tmp_path / "none.sqlite3"), config.configured(), 0.5)
    found = asyncio.run(ring.verify(token))
    assert found is not None and found.name == "ops" and found.admin
    assert asyncio.run(ring.verify(token + "x")) is None
    assert not (tmp_path / "none.sqlite3").exists()  # the gateway never creates the table


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"name": "x", "sha256": "abc"}, "64 hex"),
        ({"name": "X!", "sha256": "0" * 64}, "name"),
        ({"name": "x", "sha256": "0" * 64, "rpm": 0}, "rpm"),
        ({"name": "x", "sha256": "0" * 64, "key": "plain"}, "unknown field"),
        ({"name": "x", "sha256": "0" * 64, "adapters": "a"}, "list"),
    ],
)
def test_auth_config_validation(entry: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AuthConfig(keys=[entry])


def test_reset_duration_spelling() -> None:
    assert [reset_duration(s) for s in (0.02, 1.0, 1.5, 59.9999, 360.0)] == [
        "20ms",
        "1s",
        "1.5s",
        "60s",
        "6m0s",
    ]


# ----------------------------------------------------------------------------- the app


@pytest.fixture
def store(home: Path, tiny_model: BaseModel, tmp_path: Path) -> Store:
    store = Store(home / "store", BaseRegistry(home / "models"))
    for seed, name in enumerate(("alpha", "beta"), start=1):
        store.publish(write_lora(tmp_path / name, tiny_model, r=4, seed=seed), name)
    return store


def _settings() -> Settings:
    settings = load_settings()
    settings.default_base = BASE
    settings.gateway.engine.max_model_len = 256
    settings.gateway.auth.poll_s = 0.01
    return settings


@pytest.fixture
def keys(home: Path) -> dict[str, str]:
    table = KeyStore(home / "keys.sqlite3")
    return {
        "a": table.create("tenant-a", ["alpha"])[1],
        "b": table.create("tenant-b", ["beta"])[1],
        "admin": table.create("ops", [], admin=True)[1],
    }


@pytest.fixture
def gateway(store: Store, keys: dict[str, str]) -> Iterator[tuple[TestClient[Any], FakeEngine]]:
    app, engines = fake_app(_settings(), store=store)
    with TestClient(app) as client:
        yield client, engines[BASE]


def test_without_keys_the_gateway_is_open(store: Store) -> None:
    app, _ = fake_app(_settings(), store=store)
    with TestClient(app) as client:
        assert client.post("/v1/chat/completions", json=_chat("beta")).status_code == 200
        assert client.get("/metrics").status_code == 200


def test_every_route_but_health_and_schema_needs_a_key(
    gateway: tuple[TestClient[Any], FakeEngine], keys: dict[str, str]
) -> None:
    client, _ = gateway
    for method, path in [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/alpha"),
        ("GET", "/v1/usage"),
        ("GET", "/metrics"),
        # Routes added by other packages get the same guard without doing anything.
        ("GET", "/v1/files"),
        ("GET", "/v1/fine_tuning/jobs"),
    ]:
        error = _error(client.request(method, path, json=_chat("alpha")), 401)
        assert "didn't provide an API key" in error["message"]
        wrong = client.request(method, path, json=_chat("alpha"), headers=_bearer("sk-tg-nope"))
        assert _error(wrong, 401)["code"] == "invalid_api_key"
    assert client.get("/health").status_code == 200
    assert client.get("/schema/openapi.json").status_code == 200
    # A bad body from an unknown caller is still a 401: nothing is parsed before auth.
    assert client.post("/v1/chat/completions", content=b"{").status_code == 401
    assert _error(client.get("/metrics", headers=_bearer(keys["a"])), 403)["code"] == (
        "insufficient_permissions"
    )
    assert client.get("/metrics", headers=_bearer(keys["admin"])).status_code == 200
    assert client.get("/v1/fine_tuning/jobs", headers=_bearer(keys["a"])).status_code == 200


def test_a_key_sees_and_uses_only_its_adapters(
    gateway: tuple[TestClient[Any], FakeEngine], keys: dict[str, str]
) -> None:
    client, _ = gateway
    a = _bearer(keys["a"])
    ok = client.post("/v1/chat/completions", json=_chat("alpha"), headers=a)
    assert ok.status_code == 200 and ok.json()["model"] == "alpha@1"
    assert client.post("/v1/chat/completions", json=_chat(BASE), headers=a).status_code == 200
    hidden = _error(client.post("/v1/chat/completions", json=_chat("beta@1"), headers=a), 404)
    missing = _error(client.post("/v1/chat/completions", json=_chat("gamma@1"), headers=a), 404)
    # Indistinguishable from an adapter that does not exist.
    assert hidden == {**missing, "message": missing["message"].replace("gamma", "beta")}
    assert _error(
        client.post("/v1/completions", json={"model": "beta", "prompt": "x"}, headers=a), 404
    )
    listed = {m["id"] for m in client.get("/v1/models", headers=a).json()["data"]}
    assert listed == {BASE, "alpha", "alpha@1"}
    assert client.get("/v1/models/beta", headers=a).status_code == 404
    assert client.get("/v1/models/alpha", headers=a).status_code == 200

    b = _bearer(keys["b"])
    assert client.post("/v1/chat/completions", json=_chat("beta"), headers=b).status_code == 200
    usage_a = client.get("/v1/usage", headers=a, params={"group_by": "artifact"}).json()["data"]
    usage_b = client.get("/v1/usage", headers=b, params={"group_by": "artifact"}).json()["data"]
    assert {g["group"] for g in usage_a} == {"alpha@1", BASE, None}  # None: its 404s
    assert {g["group"] for g in usage_b} == {"beta@1"}
    by_key = client.get("/v1/usage", headers=a, params={"group_by": "key"}).json()["data"]
    assert [g["group"] for g in by_key] == ["tenant-a"]
    admin = client.get("/v1/usage", headers=_bearer(keys["admin"]), params={"group_by": "key"})
    assert {g["group"] for g in admin.json()["data"]} == {"tenant-a", "tenant-b"}


def test_a_key_created_while_running_works_at_once(
    gateway: tuple[TestClient[Any], FakeEngine], home: Path
) -> None:
    client, _ = gateway
    _, secret = KeyStore(home / "keys.sqlite3").create("late", ["beta"])
    time.sleep(0.02)
    response = client.post("/v1/chat/completions", json=_chat("beta"), headers=_bearer(secret))
    assert response.status_code == 200
    KeyStore(home / "keys.sqlite3").revoke("late")
    time.sleep(0.02)
    response = client.post("/v1/chat/completions", json=_chat("beta"), headers=_bearer(secret))
    assert _error(response, 401)["code"] == "invalid_api_key"


@contextlib.asynccontextmanager
async def _concurrent_client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """The app under its lifespan, behind a client whose requests really overlap
    (litestar's AsyncTestClient runs one request at a time)."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    lifespan = asyncio.create_task(app(scope, inbox.get, outbox.put))  # type: ignore[arg-type]
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # litestar's scope types
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await lifespan


async def _burst(
    client: httpx.AsyncClient, n: int, headers: dict[str, str], **extra: Any
) -> list[httpx.Response]:
    return list(
        await asyncio.gather(
            *(
                client.post("/v1/chat/completions", json=_chat("alpha", **extra), headers=headers)
                for _ in range(n)
            )
        )
    )


def test_requests_per_minute_hold_under_concurrency(store: Store, home: Path) -> None:
    _, secret = KeyStore(home / "keys.sqlite3").create("small", ["alpha"], rpm=5)

    async def scenario() -> list[httpx.Response]:
        app, engines = fake_app(_settings(), store=store)
        engines[BASE].knobs.step_s = 0.01  # the burst overlaps in the gateway
        async with _concurrent_client(app) as client:
            return await _burst(client, 20, _bearer(secret))

    responses = asyncio.run(scenario())
    assert sorted(r.status_code for r in responses) == [200] * 5 + [429] * 15
    for r in responses:
        assert r.headers["x-ratelimit-limit-requests"] == "5"
        assert {f"x-ratelimit-{h}-requests" for h in RATE_HEADERS} <= set(r.headers)
        if r.status_code == 429:
            error = _error(r, 429)
            assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["x-ratelimit-remaining-requests"] == "0"


def test_tokens_per_minute_count_prompt_and_max_tokens(store: Store, home: Path) -> None:
    _, secret = KeyStore(home / "keys.sqlite3").create("tok", ["alpha"], tpm=100)
    app, _ = fake_app(_settings(), store=store)
    with TestClient(app) as client:
        codes = []
        for _ in range(4):
            r = client.post(
                "/v1/chat/completions", json=_chat("alpha", max_tokens=30), headers=_bearer(secret)
            )
            codes.append(r.status_code)
            assert r.headers["x-ratelimit-limit-tokens"] == "100"
        # Each request is ~9 prompt tokens + 30: two fit in 100, the third does not.
        assert codes == [200, 200, 429, 429]
        assert _error(r, 429)["type"] == "tokens"
        too_big = client.post(
            "/v1/chat/completions", json=_chat("alpha", max_tokens=200), headers=_bearer(secret)
        )
        assert "larger than the limit" in _error(too_big, 429)["message"]


def test_bounded_admission_by_tokens_is_503_with_retry_after(store: Store) -> None:
    settings = _settings()
    settings.gateway.max_pending_tokens = 256  # two requests of ~9 + 100 tokens

    async def scenario() -> tuple[list[httpx.Response], int, int]:
        app, engines = fake_app(settings, store=store)
        engines[BASE].knobs.step_s = 0.005
        async with _concurrent_client(app) as client:
            responses = await _burst(client, 6, {}, max_tokens=100)
            admission = app.state.services.admission
            return responses, admission.in_flight, admission.pending_tokens

    responses, in_flight, pending = asyncio.run(scenario())
    assert sorted(r.status_code for r in responses) == [200] * 2 + [503] * 4
    for r in responses:
        if r.status_code == 503:
            assert _error(r, 503)["code"] == "overloaded" and r.headers["retry-after"] == "1"
    assert (in_flight, pending) == (0, 0)


def test_body_size_n_and_max_tokens_caps(store: Store) -> None:
    settings = _settings()
    settings.gateway.max_body_bytes = 2048
    settings.gateway.max_tokens_limit = 50
    app, _ = fake_app(settings, store=store)
    with TestClient(app) as client:
        big = _chat(BASE) | {"messages": [{"role": "user", "content": "x " * 2000}]}
        _error(client.post("/v1/chat/completions", json=big), 413)
        assert (
            _error(client.post("/v1/chat/completions", json=_chat(BASE, n=2)), 400)["param"] == "n"
        )
        error = _error(client.post("/v1/chat/completions", json=_chat(BASE, max_tokens=51)), 400)
        assert error["param"] == "max_tokens" and "at most 50" in error["message"]
        # Without max_tokens the budget is the cap, not the rest of the context.
        ok = client.post("/v1/chat/completions", json=_chat(BASE) | {"max_tokens": None})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 50


def test_an_adapter_that_fails_to_load_fails_only_its_requests(store: Store) -> None:
    app, engines = fake_app(_settings(), store=store)
    engines[BASE].knobs.broken_adapters = {"beta@1"}
    with TestClient(app) as client:
        for i in range(10):
            model = "beta" if i % 2 else "alpha"
            r = client.post("/v1/chat/completions", json=_chat(model, stream=bool(i % 3)))
            if model == "beta":
                error = _error(r, 500)
                assert error["code"] == "adapter_load_failed" and "beta@1" in error["message"]
            else:
                assert r.status_code == 200
        assert app.state.services.admission.in_flight == 0


def test_a_dead_engine_is_503_and_stops_the_server(store: Store) -> None:
    app, engines = fake_app(_settings(), store=store)
    stopped: list[bool] = []
    with TestClient(app) as client:
        app.state.watchdog.stop = lambda: stopped.append(True)
        assert client.get("/health").status_code == 200
        engines[BASE]._started = False  # what vLLM's `errored` reports after a crash
        assert app.state.watchdog.check() is not None and stopped == [True]
        assert client.get("/health").status_code == 503
        r = client.post("/v1/chat/completions", json=_chat("alpha"))
        assert _error(r, 503)["type"] == "server_error" and "retry-after" in r.headers
