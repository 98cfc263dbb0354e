"""Every SQL statement of the catalog, for the embedded SQLite backend.

The store talks to the catalog only through `read()`/`write()` transactions and the methods
of `CatalogTx`; a PostgreSQL backend (several gateways on several hosts) implements the same
two context managers with `SELECT ... FOR UPDATE` where this one uses SQLite's database-wide
write lock (`BEGIN IMMEDIATE`). Plain SQL only: no SQLite-specific tricks outside this module.

Invariants the schema keeps:
- `versions.uid` is AUTOINCREMENT, so a uid is never reused even after removal (the gateway
  uses it as vLLM's `lora_int_id`, which must stay stable and > 0).
- `artifacts.next_version` only grows, so a removed version number is never handed out again.
- `meta.generation` grows in the same transaction as every change readers can observe.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "AliasEvent",
    "AuditEntry",
    "CanaryRow",
    "CatalogTx",
    "SqliteCatalog",
    "VersionRow",
]

SCHEMA_VERSION = 2
# A publisher holds the write lock only to allocate a version, move one folder and insert a
# few rows; waiting up to this long for it is far beyond any healthy contention.
_BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('lora', 'model')),
    next_version INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    uid INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL REFERENCES artifacts (name),
    version INTEGER NOT NULL CHECK (version > 0),
    base TEXT NOT NULL,
    created_at TEXT NOT NULL,
    card TEXT NOT NULL,
    UNIQUE (name, version)
);
CREATE TABLE IF NOT EXISTS files (
    uid INTEGER NOT NULL REFERENCES versions (uid) ON DELETE CASCADE,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (uid, path)
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES versions (name, version)
);
CREATE TABLE IF NOT EXISTS alias_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER,
    previous INTEGER,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0);
"""

# Statements that bring a catalog from version N-1 to N, run one by one (trigger bodies hold
# `;`, so they cannot go through `_SCHEMA`'s split) inside the opening write transaction.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        # The audit trail. Append-only: the triggers refuse any UPDATE or DELETE, so no
        # command (nor a bug in one) can rewrite history through this catalog's API.
        """CREATE TABLE IF NOT EXISTS audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            subject TEXT NOT NULL,
            before TEXT,
            after TEXT
        )""",
        """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
        """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
        # A canary rides on an alias: `name@alias` keeps its stable target in `aliases`, and
        # `percent` of its callers go to `version` instead until promotion or rollback.
        """CREATE TABLE IF NOT EXISTS canaries (
            name TEXT NOT NULL,
            alias TEXT NOT NULL,
            version INTEGER NOT NULL,
            percent INTEGER NOT NULL CHECK (percent BETWEEN 1 AND 100),
            updated_at TEXT NOT NULL,
            PRIMARY KEY (name, alias),
            FOREIGN KEY (name, version) REFERENCES versions (name, version)
        )""",
    ),
}


@dataclass(frozen=True)
class VersionRow:
    uid: int
    name: str
    version: int
    kind: str
    base: str
    created_at: str
    card: dict[str, Any]
    files: dict[str, str]
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class AuditEntry:
    """One recorded change; `before`/`after` are JSON values (None: nothing there)."""

    id: int
    at: str
    actor: str
    action: str
    subject: str
    before: Any
    after: Any


@dataclass(frozen=True)
class CanaryRow:
    name: str
    alias: str
    version: int
    percent: int


@dataclass(frozen=True)
class AliasEvent:
    """One alias move; `version` None means the alias was dropped (its target was removed)."""

    name: str
    alias: str
    version: int | None
    previous: int | None
    at: str


class CatalogTx:
    """The catalog operations, all inside one transaction opened by `SqliteCatalog`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    # -- artifacts and versions ---------------------------------------------------------
    def kind_of(self, name: str) -> str | None:
        row = self._conn.execute("SELECT kind FROM artifacts WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def allocate_version(self, name: str, kind: str, at: str) -> int:
        """The next version number of `name` (creating the artifact), never handed out twice."""
        self._conn.execute(
            "INSERT OR IGNORE INTO artifacts (name, kind, next_version, created_at)"
            " VALUES (?, ?, 1, ?)",
            (name, kind, at),
        )
        (version,) = self._conn.execute(
            "SELECT next_version FROM artifacts WHERE name = ?", (name,)
        ).fetchone()
        self._conn.execute(
            "UPDATE artifacts SET next_version = next_version + 1 WHERE name = ?", (name,)
        )
        return int(version)

    def insert_version(
        self,
        name: str,
        version: int,
        base: str,
        created_at: str,
        card: dict[str, Any],
        files: dict[str, tuple[str, int]],
    ) -> int:
        """Record a version and its files; returns its catalog-wide uid."""
        cur = self._conn.execute(
            "INSERT INTO versions (name, version, base, created_at, card) VALUES (?, ?, ?, ?, ?)",
            (name, version, base, created_at, json.dumps(card, sort_keys=True)),
        )
        uid = int(cur.lastrowid or 0)
        self._conn.executemany(
            "INSERT INTO files (uid, path, sha256, size) VALUES (?, ?, ?, ?)",
            [(uid, rel, sha, size) for rel, (sha, size) in sorted(files.items())],
        )
        self._bump()
        return uid

    def get(self, name: str, version: int) -> VersionRow | None:
        rows = self._versions("v.name = ? AND v.version = ?", (name, version))
        return rows[0] if rows else None

    def latest(self, name: str) -> VersionRow | None:
        rows = self._versions(
            "v.name = ? AND v.version = (SELECT MAX(version) FROM versions WHERE name = ?)",
            (name, name),
        )
        return rows[0] if rows else None

    def list_versions(self, name: str | None = None) -> list[VersionRow]:
        if name is None:
            return self._versions("1 = 1", ())
        return self._versions("v.name = ?", (name,))

    def names(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM artifacts ORDER BY name")]

    def delete_version(self, name: str, version: int) -> None:
        self._conn.execute(
            "DELETE FROM files WHERE uid IN"
            " (SELECT uid FROM versions WHERE name = ? AND version = ?)",
            (name, version),
        )
        self._conn.execute("DELETE FROM versions WHERE name = ? AND version = ?", (name, version))
        self._bump()

    def set_card(self, name: str, version: int, card: dict[str, Any]) -> None:
        self._conn.execute(
            "UPDATE versions SET card = ? WHERE name = ? AND version = ?",
            (json.dumps(card, sort_keys=True), name, version),
        )
        self._bump()

    def versions_present(self) -> set[tuple[str, int]]:
        return {(n, int(v)) for n, v in self._conn.execute("SELECT name, version FROM versions")}

    # -- aliases --------------------------------------------------------------------------
    def alias_target(self, name: str, alias: str) -> int | None:
        row = self._conn.execute(
            "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)
        ).fetchone()
        return None if row is None else int(row[0])

    def aliases_to(self, name: str, version: int) -> list[str]:
        return [
            r[0]
            for r in self._conn.execute(
                "SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias",
                (name, version),
            )
        ]

    def set_alias(self, name: str, alias: str, version: int, at: str) -> int | None:
        """Point the alias at `version`; returns the version it pointed at before."""
        previous = self.alias_target(name, alias)
        self._conn.execute(
            "INSERT INTO aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name, alias) DO UPDATE SET"
            " version = excluded.version, updated_at = excluded.updated_at",
            (name, alias, version, at),
        )
        self._history(name, alias, version, previous, at)
        self._bump()
        return previous

    def drop_alias(self, name: str, alias: str, at: str) -> None:
        previous = self.alias_target(name, alias)
        self._conn.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
        self._history(name, alias, None, previous, at)
        self._bump()

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        sql = "SELECT name, alias, version, previous, at FROM alias_history WHERE name = ?"
        params: tuple[Any, ...] = (name,)
        if alias is not None:
            sql += " AND alias = ?"
            params += (alias,)
        return [AliasEvent(*row) for row in self._conn.execute(sql + " ORDER BY id", params)]

    # -- canaries -------------------------------------------------------------------------
    def canary(self, name: str, alias: str) -> CanaryRow | None:
        row = self._conn.execute(
            "SELECT name, alias, version, percent FROM canaries WHERE name = ? AND alias = ?",
            (name, alias),
        ).fetchone()
        return None if row is None else CanaryRow(*row)

    def canaries_to(self, name: str, version: int) -> list[CanaryRow]:
        rows = self._conn.execute(
            "SELECT name, alias, version, percent FROM canaries WHERE name = ? AND version = ?"
            " ORDER BY alias",
            (name, version),
        )
        return [CanaryRow(*r) for r in rows]

    def set_canary(self, name: str, alias: str, version: int, percent: int, at: str) -> None:
        self._conn.execute(
            "INSERT INTO canaries (name, alias, version, percent, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name, alias) DO UPDATE SET"
            " version = excluded.version, percent = excluded.percent,"
            " updated_at = excluded.updated_at",
            (name, alias, version, percent, at),
        )
        self._bump()

    def drop_canary(self, name: str, alias: str) -> None:
        self._conn.execute("DELETE FROM canaries WHERE name = ? AND alias = ?", (name, alias))
        self._bump()

    # -- audit trail ----------------------------------------------------------------------
    def audit(
        self, at: str, actor: str, action: str, subject: str, before: Any, after: Any
    ) -> None:
        self._conn.execute(
            "INSERT INTO audit (at, actor, action, subject, before, after)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                at,
                actor,
                action,
                subject,
                None if before is None else json.dumps(before, sort_keys=True),
                None if after is None else json.dumps(after, sort_keys=True),
            ),
        )

    def audit_entries(self, subject_name: str | None = None) -> list[AuditEntry]:
        """Oldest first; with `subject_name`, the entries about that name (any `@suffix`)."""
        sql = "SELECT id, at, actor, action, subject, before, after FROM audit"
        params: tuple[Any, ...] = ()
        if subject_name is not None:
            sql += " WHERE subject = ? OR substr(subject, 1, ?) = ?"
            params = (subject_name, len(subject_name) + 1, subject_name + "@")
        return [
            AuditEntry(
                id=i,
                at=at,
                actor=actor,
                action=action,
                subject=subject,
                before=None if before is None else json.loads(before),
                after=None if after is None else json.loads(after),
            )
            for i, at, actor, action, subject, before, after in self._conn.execute(
                sql + " ORDER BY id", params
            )
        ]

    # -- change feed ----------------------------------------------------------------------
    def generation(self) -> int:
        (value,) = self._conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(value)

    # -- helpers --------------------------------------------------------------------------
    def _bump(self) -> None:
        self._conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")

    def _history(
        self, name: str, alias: str, version: int | None, previous: int | None, at: str
    ) -> None:
        self._conn.execute(
            "INSERT INTO alias_history (name, alias, version, previous, at) VALUES (?, ?, ?, ?, ?)",
            (name, alias, version, previous, at),
        )

    def _versions(self, where: str, params: tuple[Any, ...]) -> list[VersionRow]:
        rows = self._conn.execute(
            "SELECT v.uid, v.name, v.version, a.kind, v.base, v.created_at, v.card"
            " FROM versions v JOIN artifacts a ON a.name = v.name"
            f" WHERE {where} ORDER BY v.uid",
            params,
        ).fetchall()
        if not rows:
            return []
        uids = [r[0] for r in rows]
        marks = ",".join("?" * len(uids))
        files: dict[int, dict[str, str]] = {uid: {} for uid in uids}
        for uid, rel, sha in self._conn.execute(
            f"SELECT uid, path, sha256 FROM files WHERE uid IN ({marks}) ORDER BY path", uids
        ):
            files[uid][rel] = sha
        aliases: dict[tuple[str, int], list[str]] = {}
        for name, alias, version in self._conn.execute(
            "SELECT name, alias, version FROM aliases ORDER BY alias"
        ):
            aliases.setdefault((name, version), []).append(alias)
        return [
            VersionRow(
                uid=uid,
                name=name,
                version=version,
                kind=kind,
                base=base,
                created_at=created_at,
                card=json.loads(card),
                files=files[uid],
                aliases=tuple(aliases.get((name, version), ())),
            )
            for uid, name, version, kind, base, created_at, card in rows
        ]


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
                if current == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    current = 1
                if current < SCHEMA_VERSION:
                    for version in range(current + 1, SCHEMA_VERSION + 1):
                        for statement in _MIGRATIONS[version]:
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
