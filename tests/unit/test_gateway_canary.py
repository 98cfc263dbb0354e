"""Canary routing through the real app over fake engines: sticky split, per-version
accounting, promotion and rollback picked up without a restart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from adapters_store import BaseModel, Store
from gateway.auth import KeyStore
from gateway.routing import canary_bucket, sticky_id
from gateway.testing import FakeEngine, fake_app
from tests.unit import test_gateway_routing as routing
from tunegate.config import load_settings

# The routing tests' fixtures: a store on the test home and the app over it.
store = routing.store
gateway = routing.gateway


def _ask(client: TestClient[Any], model: str, **extra: Any) -> str:
    headers = extra.pop("headers", {})
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    response = client.post("/v1/chat/completions", json={**body, **extra}, headers=headers)
    assert response.status_code == 200, response.text
    return response.headers["x-tunegate-artifact"]


@pytest.fixture
def published(store: Store, tmp_path: Path, tiny_model: BaseModel) -> Store:
    """`t@1` and `t@2`, `t@prod` -> `t@1`: ready for a canary of `t@2`."""
    for seed in (1, 2):
        routing._publish(store, tmp_path, tiny_model, "t", seed=seed)
    store.set_alias("t@1", "prod")
    return store


def _start_canary(client: TestClient[Any], store: Store, percent: int) -> Store:
    store.set_canary("t@2", "prod", percent)
    routing._wait_for_generation(client, store.generation())
    return store


def test_sticky_split_by_user_with_separate_accounting_then_promote_and_rollback(
    gateway: tuple[TestClient[Any], FakeEngine], published: Store
) -> None:
    client, engine = gateway
    store = _start_canary(client, published, 50)

    users = [f"user-{i}" for i in range(20)]
    expected = {
        u: "t@2" if canary_bucket("t@prod", sticky_id(None, u) or "") < 50 else "t@1" for u in users
    }
    assert set(expected.values()) == {"t@1", "t@2"}  # the test data covers both groups
    answers: Counter[str] = Counter()
    for u in users:
        first, second = _ask(client, "t@prod", user=u), _ask(client, "t@prod", user=u)
        assert first == second == expected[u]  # a user sees one version
        answers[first] += 2
    assert engine.calls[-1].adapter is not None
    assert engine.calls[-1].adapter.name == expected[users[-1]]
    # Other references of the artifact are not part of the canary.
    assert {_ask(client, "t@1", user=u) for u in users} == {"t@1"}
    assert _ask(client, "t", user=users[0]) == "t@2"  # latest, not prod

    usage = client.get("/v1/usage", params={"group_by": "artifact"}).json()["data"]
    counted = {g["group"]: g["requests"] for g in usage}
    assert counted == {"t@1": answers["t@1"] + len(users), "t@2": answers["t@2"] + 1}

    store.promote("t")
    routing._wait_for_generation(client, store.generation())
    assert {_ask(client, "t@prod", user=u) for u in users} == {"t@2"}
    store.rollback_alias("t")
    routing._wait_for_generation(client, store.generation())
    assert {_ask(client, "t@prod", user=u) for u in users} == {"t@1"}


def test_without_a_user_field_the_api_key_is_sticky(home: Path, published: Store) -> None:
    store = published
    store.set_canary("t@2", "prod", 50)
    names = [f"k{i}" for i in range(12)]
    expected = {n: "t@2" if canary_bucket("t@prod", n) < 50 else "t@1" for n in names}
    assert set(expected.values()) == {"t@1", "t@2"}
    table = KeyStore(home / "keys.sqlite3")
    secrets = {n: table.create(n, ["t"])[1] for n in names}
    settings = load_settings()
    settings.default_base = routing.BASE
    app, _ = fake_app(settings, store=store)
    with TestClient(app) as client:
        for n in names:
            headers = {"Authorization": f"Bearer {secrets[n]}"}
            seen = {_ask(client, "t@prod", headers=headers) for _ in range(3)}
            assert seen == {expected[n]}


def test_no_sticky_id_splits_per_request(
    gateway: tuple[TestClient[Any], FakeEngine], published: Store
) -> None:
    store = _start_canary(gateway[0], published, 100)
    client = gateway[0]
    # 100%: every anonymous request goes to the canary; the stable alias target is unchanged.
    assert {_ask(client, "t@prod") for _ in range(5)} == {"t@2"}
    assert store.resolve("t@prod").version == 1
