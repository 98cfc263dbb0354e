"""Crashes and concurrency: a publisher killed at any point leaves no trace, a live one is
never swept, and concurrent publishers of one name get distinct versions.

Publishers run as real child processes (SIGKILL cannot be simulated in-process). Each
child stops itself at a chosen point by patching one function, and signals the parent
through a marker file, so nothing here depends on timing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from adapters_store import BaseModel, BaseRegistry, Store, StoreConfig
from adapters_store.testing import write_lora

_CHILD = """
import json, os, shutil, signal, sys, time
from pathlib import Path
from adapters_store import BaseRegistry, Store, StoreConfig
import adapters_store.sqlite_catalog as sql

root, models, adapter, name, mode, marker, count, url = sys.argv[1:9]

def announce():
    Path(marker).write_text(str(os.getpid()))

if mode == "stall-in-copy":
    import adapters_store.catalog as catalog
    def copy_tree(src, dest):
        def copy2(s, d, **kw):
            out = shutil.copy2(s, d, **kw)
            announce()
            time.sleep(600)  # the parent kills us here, after the first file
            return out
        shutil.copytree(src, dest, copy_function=copy2)
    catalog.copy_tree = copy_tree
elif mode == "die-before-commit":
    def insert_version(self, *args, **kw):
        announce()
        os.kill(os.getpid(), signal.SIGKILL)  # after the move into blobs/, before commit
    sql.CatalogTx.insert_version = insert_version
elif mode == "wait-for-go":
    announce()
    while not Path(marker + ".go").exists():
        time.sleep(0.01)

store = Store(Path(root), BaseRegistry(Path(models)), StoreConfig(catalog_url=url or None))
done = [store.publish(Path(adapter), name).version for _ in range(int(count))]
print(json.dumps(done))
"""


@pytest.fixture
def store(home: Path, store_config: StoreConfig) -> Iterator[Store]:
    """A fresh store, its catalog in SQLite and then in PostgreSQL: with PostgreSQL the
    publishers below are separate processes on one database, as several gateways are."""
    store = Store(home / "store", BaseRegistry(home / "models"), store_config)
    yield store
    store.close()


@pytest.fixture
def adapter(tmp_path: Path, tiny_model: BaseModel, store: Store) -> Path:
    folder = write_lora(tmp_path / "adapter", tiny_model, r=4)
    # Fill the store's cache of vLLM's rules, so children need not import vLLM (~15 s).
    store._arch(tiny_model.architecture)
    return folder


def _child(
    store: Store, adapter: Path, mode: str, marker: Path, name: str = "telecom", count: int = 1
) -> subprocess.Popen[str]:
    args = [str(store.root), str(store.bases.models_dir), str(adapter), name, mode, str(marker)]
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args, str(count), store.config.catalog_url or ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(marker: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300  # generous: only bounds a broken test, never a pass
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("child never reached the marker")
        time.sleep(0.05)


def _entries(folder: Path) -> list[str]:
    return (
        sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
        if folder.exists()
        else []
    )


def test_publish_killed_mid_copy_leaves_no_trace(
    store: Store, adapter: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    proc = _child(store, adapter, "stall-in-copy", marker)
    try:
        _wait_for(marker, proc)
        # While the publisher is alive, opening the store must not sweep its work.
        Store(store.root, store.bases, store.config).close()
        assert _entries(store.root / "tmp"), "the live publisher's staging folder was swept"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _entries(store.root / "tmp"), "expected a half-copied staging folder"
    assert store.list() == []

    reopened = Store(store.root, store.bases, store.config)
    assert _entries(reopened.root / "tmp") == []
    assert _entries(reopened.root / "blobs") == []
    assert reopened.list() == []
    assert reopened.publish(adapter, "telecom").version == 1
    assert reopened.verify() == []


def test_publish_killed_before_commit_leaves_no_trace(
    store: Store, adapter: Path, tmp_path: Path
) -> None:
    generation = store.generation()
    proc = _child(store, adapter, "die-before-commit", tmp_path / "marker")
    assert proc.wait(timeout=300) == -signal.SIGKILL
    # The folder was moved into blobs/, but the transaction that records it never committed.
    assert (store.root / "blobs" / "telecom" / "1").is_dir()
    assert store.list() == []
    assert store.generation() == generation

    reopened = Store(store.root, store.bases, store.config)
    assert _entries(reopened.root / "blobs") == []
    assert _entries(reopened.root / "tmp") == []
    published = reopened.publish(adapter, "telecom")
    assert published.version == 1
    assert reopened.verify() == []


def test_concurrent_publishers_get_distinct_versions(
    store: Store, adapter: Path, tmp_path: Path
) -> None:
    markers = [tmp_path / f"marker{i}" for i in range(3)]
    procs = [_child(store, adapter, "wait-for-go", m, count=3) for m in markers]
    try:
        for marker, proc in zip(markers, procs, strict=True):
            _wait_for(marker, proc)
        for marker in markers:  # release them together
            Path(str(marker) + ".go").touch()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            results.extend(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sorted(results) == list(range(1, 10))
    listed = store.list("telecom")
    assert [v.version for v in listed] == list(range(1, 10))
    assert len({v.uid for v in listed}) == 9
    assert store.verify() == []
    assert _entries(store.root / "tmp") == []


def test_readers_in_other_processes_see_changes_through_generation(
    store: Store, adapter: Path
) -> None:
    """A second catalog connection (as the gateway's) sees each change's generation, and the
    change itself once it sees the new number."""
    watcher = Store(store.root, store.bases, store.config)
    seen = watcher.generation()
    store.publish(adapter, "telecom")
    assert watcher.generation() > seen
    assert watcher.resolve("telecom").version == 1
    seen = watcher.generation()
    store.set_alias("telecom@1", "prod")
    assert watcher.generation() > seen
    assert watcher.resolve("telecom@prod").version == 1
    seen = watcher.generation()
    store.remove("telecom@1", force=True)
    assert watcher.generation() > seen
    assert watcher.list() == []
    assert not (store.root / "blobs" / "telecom" / "1").exists()


def test_postgres_catalog_survives_its_connections_being_cut(
    home: Path, tmp_path: Path, tiny_model: BaseModel, postgres_url: str
) -> None:
    """A database restart or failover cuts every pooled connection: the next calls get
    fresh ones instead of failing (the gateway polls `generation()` all the time)."""
    store = Store(
        home / "store", BaseRegistry(home / "models"), StoreConfig(catalog_url=postgres_url)
    )
    adapter = write_lora(tmp_path / "adapter", tiny_model, r=4)
    store.publish(adapter, "telecom")
    seen = store.generation()
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        cut = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert cut is not None and cut[0] >= 1
    assert store.generation() == seen
    assert store.publish(adapter, "telecom").version == 2
    assert [v.ref for v in store.list()] == ["telecom@1", "telecom@2"]
    store.close()


def test_postgres_catalogs_opened_at_once_create_the_schema_once(postgres_url: str) -> None:
    """Gateways starting together on an empty database: one creates the tables, the others
    wait for it and find them (without the lock, CREATE TABLE IF NOT EXISTS races fail)."""
    from adapters_store.postgres_catalog import PostgresCatalog

    start = threading.Barrier(4)
    opened: list[PostgresCatalog] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            opened.append(PostgresCatalog(postgres_url))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [c.generation() for c in opened] == [0] * 4
    for c in opened:
        c.close()
