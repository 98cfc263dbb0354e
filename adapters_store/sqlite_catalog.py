"""The embedded catalog backend: `catalog.sqlite3` (the SQL itself is in `catalog_sql.py`).

SQLite's database-wide write lock (`BEGIN IMMEDIATE`) serialises writers; the schema version
is SQLite's `PRAGMA user_version`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adapters_store.catalog_sql import (
    SCHEMA_VERSION,
    AliasEvent,
    AuditEntry,
    CanaryRow,
    CatalogTx,
    VersionRow,
    schema_statements,
)

__all__ = [
    "SCHEMA_VERSION",
    "AliasEvent",
    "AuditEntry",
    "CanaryRow",
    "CatalogTx",
    "SqliteCatalog",
    "VersionRow",
]

# A publisher holds the write lock only to allocate a version, move one folder and insert a
# few rows; waiting up to this long for it is far beyond any healthy contention.
_BUSY_TIMEOUT_MS = 30_000
# Schema version 1 as one script (what a catalog written by the first release holds).
_SCHEMA = ";\n".join(schema_statements("sqlite", 0, 1))


class SqliteCatalog:
    """`catalog.sqlite3` in WAL mode: readers never block the writer nor see its partial work.

    One connection per thread (and per process after a fork), opened lazily; Python's
    implicit transactions are off so that `write()` can take the lock up front with
    `BEGIN IMMEDIATE` and hold it while the store moves the blob folder into place.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        current = self._connect().execute("PRAGMA user_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: catalog schema {current} is newer than this tunegate "
                f"understands ({SCHEMA_VERSION}); upgrade tunegate"
            )

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL can lose the last commit on power loss but never corrupts; the
        # store sweeps a blob folder whose commit was lost.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Re-read under the lock: another process may have just migrated it.
                current = conn.execute("PRAGMA user_version").fetchone()[0]
                if current < SCHEMA_VERSION:
                    for statement in schema_statements("sqlite", current):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    @contextmanager
    def read(self) -> Iterator[CatalogTx]:
        """A consistent snapshot for several queries."""
        conn = self._connect()
        conn.execute("BEGIN")
        try:
            yield CatalogTx(conn)
        finally:
            conn.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[CatalogTx]:
        """The catalog's one writer; committed when the block exits, rolled back on error."""
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield CatalogTx(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def generation(self) -> int:
        """One indexed read on an already open connection: microseconds."""
        return CatalogTx(self._connect()).generation()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None
