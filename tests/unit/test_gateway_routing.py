"""Routing `model` to engines and adapters against a real store; fake engines only."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from adapters_store import BaseModel, BaseRegistry, Store, StoreConfig
from adapters_store.bases import MANIFEST
from adapters_store.testing import write_lora
from gateway.config import EngineConfig
from gateway.engine import EngineSpec
from gateway.errors import BadRequestError, ModelNotFoundError
from gateway.routing import ModelRouter
from gateway.testing import FakeEngine, fake_app
from tunegate.config import load_settings

BASE = "tiny-random-llama"


@pytest.fixture
def store(home: Path, store_config: StoreConfig) -> Iterator[Store]:
    """The catalog in SQLite, then in PostgreSQL (tests/unit/conftest.py): hot swap and
    canaries must behave alike on both."""
    store = Store(home / "store", BaseRegistry(home / "models"), store_config)
    yield store
    store.close()


def _publish(
    store: Store, tmp_path: Path, base: BaseModel, name: str, seed: int = 0, **card: Any
) -> Any:
    folder = write_lora(tmp_path / f"{name}-{seed}", base, r=4, seed=seed)
    return store.publish(folder, name, card=card or None)


def _router(store: Store | None, enable_lora: bool = True) -> ModelRouter:
    spec = EngineSpec(model_id=BASE, path=Path("/nowhere"), enable_lora=enable_lora)
    return ModelRouter({BASE: FakeEngine(spec, EngineConfig())}, store)


def test_base_routes_to_its_engine_without_adapter(store: Store) -> None:
    router = _router(store)
    target = asyncio.run(router.resolve(BASE))
    assert (target.kind, target.artifact, target.adapter) == ("base", BASE, None)


@pytest.mark.parametrize("ref", ["telecom", "telecom@2", "telecom@prod", "telecom@latest"])
def test_references_resolve_to_versions(
    store: Store, tmp_path: Path, tiny_model: BaseModel, ref: str
) -> None:
    v1 = _publish(store, tmp_path, tiny_model, "telecom", seed=1)
    v2 = _publish(store, tmp_path, tiny_model, "telecom", seed=2, system_prompt="Route it.")
    store.set_alias(v2.ref, "prod")
    assert v1.uid != v2.uid
    target = asyncio.run(_router(store).resolve(ref))
    assert target.kind == "lora"
    assert target.artifact == "telecom@2"
    assert target.adapter is not None
    assert (target.adapter.name, target.adapter.uid, target.adapter.path) == (
        "telecom@2",
        v2.uid,
        v2.path,
    )
    assert target.system_prompt == "Route it."
    assert target.engine.model_id == BASE


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("missing", ModelNotFoundError),
        ("missing@3", ModelNotFoundError),
        ("telecom@9", ModelNotFoundError),
        ("telecom@nope", ModelNotFoundError),
        ("Telecom", BadRequestError),
        ("../etc/passwd", BadRequestError),
        ("a@b@c", BadRequestError),
    ],
)
def test_bad_references(
    store: Store, tmp_path: Path, tiny_model: BaseModel, model: str, error: type[Exception]
) -> None:
    _publish(store, tmp_path, tiny_model, "telecom")
    with pytest.raises(error) as info:
        asyncio.run(_router(store).resolve(model))
    assert info.value.param == "model"  # type: ignore[attr-defined]


def test_adapter_of_a_base_not_served_is_404(
    store: Store, tmp_path: Path, tiny_model: BaseModel, default_model: BaseModel
) -> None:
    _publish(store, tmp_path, default_model, "other")
    with pytest.raises(ModelNotFoundError, match="does not serve"):
        asyncio.run(_router(store).resolve("other"))
    _publish(store, tmp_path, tiny_model, "mine")
    with pytest.raises(ModelNotFoundError, match="enable_lora"):
        asyncio.run(_router(store, enable_lora=False).resolve("mine"))


def test_publish_and_alias_move_reroute_after_refresh(
    store: Store, tmp_path: Path, tiny_model: BaseModel
) -> None:
    async def scenario() -> list[str]:
        router = _router(store)
        await router.refresh()
        seen = []
        _publish(store, tmp_path, tiny_model, "t", seed=1)
        await router.refresh()
        seen.append((await router.resolve("t")).artifact)
        store.set_alias("t@1", "prod")
        await router.refresh()
        seen.append((await router.resolve("t@prod")).artifact)
        await router.resolve("t")
        _publish(store, tmp_path, tiny_model, "t", seed=2)
        # Cached until the change feed is read...
        seen.append((await router.resolve("t")).artifact)
        assert await router.refresh() is True
        assert await router.refresh() is False
        seen.append((await router.resolve("t")).artifact)
        store.set_alias("t@2", "prod")
        await router.refresh()
        seen.append((await router.resolve("t@prod")).artifact)
        seen.append((await router.resolve("t@1")).artifact)
        return seen

    assert asyncio.run(scenario()) == ["t@1", "t@1", "t@1", "t@2", "t@2", "t@1"]


def test_watcher_picks_up_a_publish(store: Store, tmp_path: Path, tiny_model: BaseModel) -> None:
    async def scenario() -> str:
        router = _router(store)
        router.poll_s = 0.01
        _publish(store, tmp_path, tiny_model, "w", seed=1)
        router.start_watching()
        try:
            while router.generation != store.generation():
                await asyncio.sleep(0.01)
            assert (await router.resolve("w")).artifact == "w@1"
            _publish(store, tmp_path, tiny_model, "w", seed=2)
            while router.generation != store.generation():
                await asyncio.sleep(0.01)
            return (await router.resolve("w")).artifact
        finally:
            await router.stop_watching()

    assert asyncio.run(scenario()) == "w@2"


def test_listing(store: Store, tmp_path: Path, tiny_model: BaseModel) -> None:
    _publish(store, tmp_path, tiny_model, "a", seed=1)
    _publish(store, tmp_path, tiny_model, "a", seed=2)
    store.set_alias("a@1", "prod")
    _publish(store, tmp_path, tiny_model, "b", seed=3)
    listing = asyncio.run(_router(store).models())
    rows = {(m.id, m.kind, m.parent, m.root) for m in listing}
    assert rows == {
        (BASE, "base", None, BASE),
        ("a@1", "lora", BASE, "a@1"),
        ("a@prod", "lora", BASE, "a@1"),
        ("a@2", "lora", BASE, "a@2"),
        ("a", "lora", BASE, "a@2"),
        ("b@1", "lora", BASE, "b@1"),
        ("b", "lora", BASE, "b@1"),
    }


@pytest.fixture
def gateway(home: Path, store: Store) -> Iterator[tuple[TestClient[Any], FakeEngine]]:
    settings = load_settings()
    settings.default_base = BASE
    settings.gateway.store_poll_s = 0.02
    app, engines = fake_app(settings, store=store)
    with TestClient(app) as client:
        yield client, engines[BASE]


def _wait_for_generation(client: TestClient[Any], generation: int) -> None:
    """Until the gateway's watcher has read the store's change counter."""
    for _ in range(500):
        if client.get("/health").json()["store_generation"] == generation:
            return
        time.sleep(0.02)
    raise AssertionError("the gateway never saw the store change")


def test_http_routes_adapters_and_applies_the_card_prompt(
    gateway: tuple[TestClient[Any], FakeEngine],
    store: Store,
    tmp_path: Path,
    tiny_model: BaseModel,
) -> None:
    client, engine = gateway
    v = _publish(store, tmp_path, tiny_model, "support", system_prompt="You route tickets.")
    _wait_for_generation(client, store.generation())

    user = [{"role": "user", "content": "my phone is broken"}]
    response = client.post("/v1/chat/completions", json={"model": "support", "messages": user})
    assert response.status_code == 200
    assert response.headers["x-tunegate-artifact"] == "support@1"
    assert response.json()["model"] == "support@1"
    assert response.json()["choices"][0]["message"]["content"].startswith("support@1")
    call = engine.calls[-1]
    assert call.adapter is not None and call.adapter.uid == v.uid
    with_prompt = len(call.prompt)

    own_system = [{"role": "system", "content": "x"}, *user]
    client.post("/v1/chat/completions", json={"model": "support", "messages": own_system})
    # The caller's own (one-word) system message replaced the card's three-word one.
    assert len(engine.calls[-1].prompt) == with_prompt - 2

    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["support"]["parent"] == BASE and models["support"]["root"] == "support@1"


def _publish_model(store: Store, tmp_path: Path, base: BaseModel, name: str) -> Any:
    folder = tmp_path / f"model-{name}"
    shutil.copytree(base.path, folder, ignore=shutil.ignore_patterns(MANIFEST))
    return store.publish(folder, name, kind="model", base=base.id, card={"method": "distill"})


def test_model_artifacts_get_their_own_engines_when_enabled(
    home: Path, store: Store, tmp_path: Path, tiny_model: BaseModel
) -> None:
    _publish_model(store, tmp_path, tiny_model, "student")
    _publish_model(store, tmp_path, tiny_model, "pupil")
    settings = load_settings()
    settings.default_base = BASE
    user = [{"role": "user", "content": "hi"}]

    app, engines = fake_app(settings, store=store)  # model artifacts off by default
    with TestClient(app) as client:
        off = client.post("/v1/chat/completions", json={"model": "student", "messages": user})
        assert off.status_code == 404 and "serve_model_artifacts" in off.json()["error"]["message"]
        assert "student" not in {m["id"] for m in client.get("/v1/models").json()["data"]}

    settings.gateway.engine.serve_model_artifacts = True
    settings.gateway.engine.max_model_engines = 1
    app, engines = fake_app(settings, store=store)
    with TestClient(app) as client:
        reply = client.post("/v1/chat/completions", json={"model": "student", "messages": user})
        assert reply.status_code == 200
        assert reply.headers["x-tunegate-artifact"] == "student@1"
        assert reply.json()["choices"][0]["message"]["content"].startswith("student@1")
        assert set(engines) == {BASE, "student@1"} and engines["student@1"].calls
        cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert (cards["student"]["kind"], cards["student"]["parent"]) == ("model", BASE)
        # One model engine at most: an idle one makes room for the next...
        assert client.post(
            "/v1/chat/completions", json={"model": "pupil", "messages": user}
        ).headers["x-tunegate-artifact"] == ("pupil@1")
        assert not engines["student@1"].healthy  # shut down to make room
        # ...but a busy one is not evicted: the request is told to come back.
        engines["pupil@1"].leases += 1
        busy = client.post("/v1/chat/completions", json={"model": "student", "messages": user})
        engines["pupil@1"].leases -= 1
        assert busy.status_code == 503 and busy.headers["retry-after"]
        assert busy.json()["error"]["code"] == "overloaded"
