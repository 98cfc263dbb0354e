"""Two gateways on one PostgreSQL catalog, one blob folder and one PostgreSQL accounting
store (issue #13), through the real app over fake engines: a publish, an alias move and a
canary reach both without a restart, a user gets the same version from either, both hand
vLLM the same `lora_int_id`, and `/v1/usage` on either counts the requests of both."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from adapters_store import BaseModel, BaseRegistry, Store, StoreConfig
from gateway.routing import canary_bucket, sticky_id
from gateway.testing import FakeEngine, fake_app
from tests.unit import test_gateway_routing as routing
from tunegate.config import load_settings

Gateway = tuple[TestClient[Any], FakeEngine]


@pytest.fixture
def shared(home: Path, tmp_path: Path, postgres_url: str) -> StoreConfig:
    """The store settings both gateways get: one database, one blob folder."""
    return StoreConfig(catalog_url=postgres_url, path=tmp_path / "shared-store")


@pytest.fixture
def gateways(shared: StoreConfig, postgres_url: str) -> Iterator[list[Gateway]]:
    with ExitStack() as stack:
        out = []
        for _ in range(2):
            settings = load_settings()
            settings.default_base = routing.BASE
            settings.gateway.store_poll_s = 0.02
            settings.store = dataclasses.replace(shared)
            settings.gateway.accounting.url = postgres_url
            store = Store.open(settings)
            stack.callback(store.close)
            app, engines = fake_app(settings, store=store)
            out.append((stack.enter_context(TestClient(app)), engines[routing.BASE]))
        yield out


def _ask(client: TestClient[Any], model: str, user: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    response = client.post("/v1/chat/completions", json={**body, "user": user})
    assert response.status_code == 200, response.text
    return str(response.headers["x-tunegate-artifact"])


def _seen_by_all(gateways: list[Gateway], publisher: Store) -> None:
    for client, _ in gateways:
        routing._wait_for_generation(client, publisher.generation())


def test_publish_alias_and_canary_reach_both_gateways_and_usage_is_shared(
    home: Path, tmp_path: Path, tiny_model: BaseModel, shared: StoreConfig, gateways: list[Gateway]
) -> None:
    assert shared.path is not None
    # The publisher is a third process's view (`tunegate store publish` on any host).
    publisher = Store(shared.path, BaseRegistry(home / "models"), shared)
    for seed in (1, 2):
        routing._publish(publisher, tmp_path, tiny_model, "t", seed=seed)
    publisher.set_alias("t@1", "prod")
    _seen_by_all(gateways, publisher)
    users = [f"user-{i}" for i in range(12)]
    for client, _ in gateways:
        assert {_ask(client, "t@prod", u) for u in users} == {"t@1"}

    publisher.set_canary("t@2", "prod", 50)
    _seen_by_all(gateways, publisher)
    expected = {
        u: "t@2" if canary_bucket("t@prod", sticky_id(None, u) or "") < 50 else "t@1" for u in users
    }
    assert set(expected.values()) == {"t@1", "t@2"}  # the users fall on both sides
    for u in users:
        assert [_ask(client, "t@prod", u) for client, _ in gateways] == [expected[u]] * 2
    # One version is one lora_int_id on every gateway: the catalog's uid.
    uids = [engine.calls[-1].adapter.uid for _, engine in gateways if engine.calls[-1].adapter]
    assert uids == [publisher.resolve(expected[users[-1]]).uid] * 2

    publisher.promote("t")
    _seen_by_all(gateways, publisher)
    for client, _ in gateways:
        assert {_ask(client, "t@prod", u) for u in users} == {"t@2"}

    # Each `/v1/usage` flushes its own gateway's writer first: after one call on each, the
    # shared table holds every request, and either gateway reports them all.
    params = {"group_by": "artifact"}
    for client, _ in gateways:
        client.get("/v1/usage", params=params)
    reports = [client.get("/v1/usage", params=params).json()["data"] for client, _ in gateways]
    counted = [{g["group"]: g["requests"] for g in report} for report in reports]
    per_gateway = 3 * len(users)
    to_canary = sum(v == "t@2" for v in expected.values())
    assert (
        counted[0]
        == counted[1]
        == {
            "t@1": 2 * (len(users) + len(users) - to_canary),
            "t@2": 2 * (to_canary + len(users)),
        }
    )
    assert sum(counted[0].values()) == 2 * per_gateway
    publisher.close()
