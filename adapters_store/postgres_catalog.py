"""The catalog in PostgreSQL, for several gateways (and publishers) on several hosts.

Same tables, migrations and statements as the embedded backend (`catalog_sql.py`); what
differs is how transactions open:
- `write()` takes one transaction-scoped advisory lock before anything else, so writers
  queue exactly as behind SQLite's `BEGIN IMMEDIATE`. A database-wide lock rather than row
  locks because the store's sweep relies on it: a publisher moves its blob folder into
  place only while holding the writers' lock, so a sweep holding it knows any folder
  without a row is debris. Under READ COMMITTED, every statement after the lock sees all
  earlier writers' commits, so `allocate_version` can never hand out a number twice.
- `read()` is a REPEATABLE READ, READ ONLY transaction: one snapshot for its queries.
- The schema version is `meta.schema_version` (SQLite keeps it in `PRAGMA user_version`).

Blobs stay on the filesystem: every gateway and publisher on one database must mount the
same store folder (`blobs/`, `tmp/`) at its `store_dir`, or their sweeps would discard
each other's folders as debris.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from adapters_store.catalog_sql import SCHEMA_VERSION, CatalogTx, schema_statements
from adapters_store.errors import CatalogUnavailableError
from adapters_store.postgres import new_pool, open_and_prepare, qmark

__all__ = ["PostgresCatalog"]

# Any fixed 64-bit number: the advisory-lock key of "the catalog's writer" in this database.
_WRITE_LOCK = 0x74756E6567617465  # "tunegate"
# Connections one process keeps: the gateway's poller, a request thread, a publisher.
_POOL_MAX = 4


class _Qmark:
    """A psycopg connection that takes the shared statements' `?` placeholders (all in
    `catalog_sql.py`, translated by `qmark`); values still travel separately from the SQL."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        return self._conn.execute(qmark(sql), parameters)  # type: ignore[arg-type]

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(qmark(sql), parameters)  # type: ignore[arg-type]


class PostgresCatalog:
    """The catalog in the database at `url` (`postgresql://...`), created on first use."""

    def __init__(self, url: str, setting: str = "store.catalog_url") -> None:
        self.url = url
        self._setting = setting
        self._pid = os.getpid()
        open_and_prepare(url, setting, "catalog", self._migrate, CatalogUnavailableError)
        self._pool = self._new_pool()

    def _new_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        return new_pool(self.url, "tunegate-catalog", _POOL_MAX, autocommit=True)

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            # Under the writers' lock: a second process opening at the same time waits,
            # then finds the schema made (PostgreSQL's DDL is transactional).
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            current = 0
            if conn.execute("SELECT to_regclass('meta')").fetchone() != (None,):
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                current = 1 if row is None else int(row[0])
            if current > SCHEMA_VERSION:
                raise CatalogUnavailableError(
                    f"{self._setting}: catalog schema {current} is newer than this tunegate "
                    f"understands ({SCHEMA_VERSION}); upgrade tunegate"
                )
            if current == SCHEMA_VERSION:
                return
            for statement in schema_statements("postgresql", current):
                conn.execute(statement)  # type: ignore[arg-type]  # DDL text, no parameters
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (SCHEMA_VERSION,),
            )

    def _pool_here(self) -> ConnectionPool[psycopg.Connection[Any]]:
        # A forked child must not share the parent's sockets: it gets a pool of its own.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._pool = self._new_pool()
        return self._pool

    @contextmanager
    def read(self) -> Iterator[CatalogTx]:
        """A consistent snapshot for several queries."""
        with self._pool_here().connection() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield CatalogTx(_Qmark(conn))
            except BaseException:
                with contextlib.suppress(psycopg.OperationalError):  # as in write()
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[CatalogTx]:
        """The catalog's one writer at a time, across every process on this database;
        committed when the block exits, rolled back on error."""
        with self._pool_here().connection() as conn:
            conn.execute("BEGIN")
            try:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                yield CatalogTx(_Qmark(conn))
            except BaseException:
                # On a broken connection the server has rolled back already; the pool
                # drops that connection, and the caller sees the first error, not this one.
                with contextlib.suppress(psycopg.OperationalError):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def generation(self) -> int:
        """One indexed read on a pooled connection: a local round trip."""
        with self._pool_here().connection() as conn:
            return CatalogTx(_Qmark(conn)).generation()

    def close(self) -> None:
        if self._pid == os.getpid():
            self._pool.close()
