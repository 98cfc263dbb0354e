"""The store's audit trail (append-only, with actors) and canaries on aliases."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from adapters_store import (
    BaseModel,
    BaseRegistry,
    ChangeRefusedError,
    Store,
    StoreConfig,
    UnknownReferenceError,
)
from adapters_store.catalog import default_actor
from adapters_store.catalog_sql import SCHEMA_VERSION, schema_statements
from adapters_store.sqlite_catalog import _SCHEMA
from tests.unit import test_store

# The store tests' fixtures: a fresh store on the test home and a valid tiny adapter.
store = test_store.store
adapter = test_store.adapter


def _trail(store: Store, name: str | None = None) -> list[tuple[str, str, object, object]]:
    return [(e.action, e.subject, e.before, e.after) for e in store.audit(name)]


def test_every_change_is_recorded_with_actor_before_and_after(
    store: Store, adapter: Path, tiny_model: BaseModel
) -> None:
    store.publish(adapter, "telecom")
    store.publish(adapter, "telecom", actor="ci-key")
    store.publish(adapter, "other")
    store.set_alias("telecom@1", "prod")
    store.set_alias("telecom@2", "prod", actor="ops")
    store.rollback_alias("telecom@prod")
    store.remove("telecom@2")
    store.record("key.create", "key:acme", None, {"adapters": ["telecom"]})

    base = tiny_model.id
    assert _trail(store, "telecom") == [
        ("publish", "telecom@1", None, {"version": 1, "kind": "lora", "base": base}),
        ("publish", "telecom@2", None, {"version": 2, "kind": "lora", "base": base}),
        ("alias", "telecom@prod", None, {"version": 1}),
        ("alias", "telecom@prod", {"version": 1}, {"version": 2}),
        ("rollback", "telecom@prod", {"version": 2}, {"version": 1}),
        ("remove", "telecom@2", {"version": 2, "aliases": [], "canary_of": []}, None),
    ]
    entries = store.audit()
    assert [e.actor for e in entries] == [
        default_actor(), "ci-key", default_actor(), default_actor(), "ops",
        default_actor(), default_actor(), default_actor(),
    ]  # fmt: skip
    assert entries[-1].subject == "key:acme" and entries[-1].action == "key.create"
    assert all(e.at.endswith("Z") for e in entries)
    assert [e.id for e in entries] == sorted(e.id for e in entries)


def test_refused_changes_leave_no_entry(store: Store, adapter: Path) -> None:
    store.publish(adapter, "telecom")
    store.set_alias("telecom@1", "prod")
    before = len(store.audit())
    with pytest.raises(ChangeRefusedError):
        store.remove("telecom@1")
    with pytest.raises(UnknownReferenceError):
        store.set_alias("telecom@9", "prod")
    with pytest.raises(ValueError, match="action"):
        store.record("", "key:x")
    assert len(store.audit()) == before


def test_the_trail_is_append_only(store: Store, adapter: Path) -> None:
    store.publish(adapter, "telecom")
    statements = ("UPDATE audit SET actor = 'someone-else'", "DELETE FROM audit")
    if store.config.catalog_url is None:
        conn = sqlite3.connect(store.root / "catalog.sqlite3")
        try:
            for sql in statements:
                with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                    conn.execute(sql)
        finally:
            conn.close()
    else:
        with psycopg.connect(store.config.catalog_url, autocommit=True) as pg:
            for sql in (*statements, "TRUNCATE audit"):
                with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                    pg.execute(sql)  # type: ignore[arg-type]
    assert [e.actor for e in store.audit()] == [default_actor()]


def test_a_version_1_catalog_is_migrated_in_place(home: Path, adapter: Path) -> None:
    root = home / "store"
    root.mkdir(parents=True)
    conn = sqlite3.connect(root / "catalog.sqlite3")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    store = Store(root, BaseRegistry(home / "models"))
    store.publish(adapter, "telecom")
    store.set_alias("telecom@1", "prod")
    assert [e.action for e in store.audit()] == ["publish", "alias"]
    conn = sqlite3.connect(root / "catalog.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()
    # Opening again (a second process) does not migrate twice.
    assert [e.action for e in Store(root, BaseRegistry(home / "models")).audit()] == [
        "publish",
        "alias",
    ]


def test_canary_promote_and_rollback(store: Store, adapter: Path) -> None:
    for _ in range(3):
        store.publish(adapter, "telecom")
    store.set_alias("telecom@1", "prod")
    gen = store.generation()
    canary = store.set_canary("telecom@2", "prod", 30, actor="ops")
    assert store.generation() > gen  # the gateway's watcher sees it
    assert (canary.stable.version, canary.canary.version, canary.percent) == (1, 2, 30)
    assert store.resolve("telecom@prod").version == 1  # the alias keeps its target
    assert store.canary("telecom@1") is None and store.canary("telecom") is None

    # Rolling back during a canary ends it: everyone is back on the stable version.
    assert store.rollback_alias("telecom").version == 1
    assert store.canary("telecom@prod") is None

    store.set_canary("telecom@3", "prod", 50)
    assert store.promote("telecom").version == 3
    assert store.resolve("telecom@prod").version == 3 and store.canary("telecom@prod") is None
    assert store.rollback_alias("telecom").version == 1  # the version before the promotion
    assert _trail(store, "telecom")[-5:] == [
        ("canary", "telecom@prod", {"version": 1}, {"version": 1, "canary": 2, "percent": 30}),
        ("rollback", "telecom@prod", {"version": 1, "canary": 2, "percent": 30}, {"version": 1}),
        ("canary", "telecom@prod", {"version": 1}, {"version": 1, "canary": 3, "percent": 50}),
        ("promote", "telecom@prod", {"version": 1, "canary": 3, "percent": 50}, {"version": 3}),
        ("rollback", "telecom@prod", {"version": 3}, {"version": 1}),
    ]


@pytest.mark.parametrize(
    ("ref", "alias", "percent", "error", "match"),
    [
        ("telecom@2", "prod", 0, ChangeRefusedError, "1..100"),
        ("telecom@2", "prod", 101, ChangeRefusedError, "1..100"),
        ("telecom@2", "prod", 12.5, ChangeRefusedError, "1..100"),
        ("telecom@1", "prod", 10, ChangeRefusedError, "already the target"),
        ("telecom@2", "staging", 10, ChangeRefusedError, "does not exist yet"),
        ("telecom@7", "prod", 10, UnknownReferenceError, "no such version"),
    ],
)
def test_bad_canaries_refused(
    store: Store,
    adapter: Path,
    ref: str,
    alias: str,
    percent: int,
    error: type[Exception],
    match: str,
) -> None:
    store.publish(adapter, "telecom")
    store.publish(adapter, "telecom")
    store.set_alias("telecom@1", "prod")
    entries = len(store.audit())
    with pytest.raises(error, match=match):
        store.set_canary(ref, alias, percent)
    assert store.canary("telecom@prod") is None and len(store.audit()) == entries


def test_canary_target_is_protected_and_a_move_ends_the_canary(store: Store, adapter: Path) -> None:
    for _ in range(3):
        store.publish(adapter, "telecom")
    store.set_alias("telecom@1", "prod")
    store.set_canary("telecom@2", "prod", 10)
    with pytest.raises(ChangeRefusedError, match="canary of telecom@prod"):
        store.remove("telecom@2")
    with pytest.raises(UnknownReferenceError, match="no canary"):
        store.promote("telecom@staging")
    store.remove("telecom@2", force=True)
    assert store.canary("telecom@prod") is None
    store.set_canary("telecom@3", "prod", 10)
    store.set_alias("telecom@1", "prod")  # an explicit move decides who serves
    assert store.canary("telecom@prod") is None


def test_a_version_1_postgres_catalog_is_migrated_in_place(
    home: Path, adapter: Path, postgres_url: str
) -> None:
    """The same migration list brings a PostgreSQL catalog of the first schema up to date."""
    with psycopg.connect(postgres_url, autocommit=True) as pg:
        for statement in schema_statements("postgresql", 0, 1):
            pg.execute(statement)  # type: ignore[arg-type]
    config = StoreConfig(catalog_url=postgres_url)
    store = Store(home / "store", BaseRegistry(home / "models"), config)
    store.publish(adapter, "telecom")
    store.set_alias("telecom@1", "prod")
    assert [e.action for e in store.audit()] == ["publish", "alias"]
    store.close()
    with psycopg.connect(postgres_url) as pg:
        found = pg.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert found == (SCHEMA_VERSION,)
    again = Store(home / "store", BaseRegistry(home / "models"), config)
    assert [e.action for e in again.audit()] == ["publish", "alias"]
    again.close()
