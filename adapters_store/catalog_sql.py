"""Every SQL statement of the catalog, written once for both backends.

The store talks to the catalog only through a backend's `read()`/`write()` transactions and
the methods of `CatalogTx`: `SqliteCatalog` (embedded, `sqlite_catalog.py`) and
`PostgresCatalog` (several gateways on one database, `postgres_catalog.py`) hand it a
connection and differ only in how they open transactions and record the schema version.
Statements use `?` placeholders (SQLite's style; the PostgreSQL backend passes them to
psycopg as `%s`) and SQL both engines accept: `INSERT ... ON CONFLICT`, `RETURNING`.
Where the dialects differ (the schema's id columns and text collation, the audit trail's
triggers) `schema_statements(dialect)` renders each one for its engine; nothing else may.

Invariants the schema keeps:
- `versions.uid` is never reused even after removal (SQLite AUTOINCREMENT, a PostgreSQL
  identity column): the gateway uses it as vLLM's `lora_int_id`, which must stay stable
  and > 0.
- `artifacts.next_version` only grows, so a removed version number is never handed out again.
- `meta.generation` grows in the same transaction as every change readers can observe.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

__all__ = [
    "SCHEMA_VERSION",
    "AliasEvent",
    "AuditEntry",
    "CanaryRow",
    "CatalogTx",
    "Dialect",
    "SqlConnection",
    "VersionRow",
    "schema_statements",
]

SCHEMA_VERSION = 2
Dialect = Literal["sqlite", "postgresql"]


class _Both(NamedTuple):
    """Where the engines need different statements: each one's, in order."""

    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]


# Tokens in the statements below, per dialect.
_TOKENS: dict[Dialect, dict[str, str]] = {
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "text": "TEXT"},
    # An identity column never hands a value out twice, like AUTOINCREMENT. Text compares
    # byte-wise as in SQLite (names, aliases and paths list in the same order on both),
    # whatever locale the database was created with.
    "postgresql": {
        "id": "INTEGER GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "text": 'TEXT COLLATE "C"',
    },
}

# Schema version 1, one statement per entry.
_SCHEMA_V1: tuple[str | _Both, ...] = (
    """CREATE TABLE IF NOT EXISTS artifacts (
    name {text} PRIMARY KEY,
    kind {text} NOT NULL CHECK (kind IN ('lora', 'model')),
    next_version INTEGER NOT NULL,
    created_at {text} NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS versions (
    uid {id},
    name {text} NOT NULL REFERENCES artifacts (name),
    version INTEGER NOT NULL CHECK (version > 0),
    base {text} NOT NULL,
    created_at {text} NOT NULL,
    card {text} NOT NULL,
    UNIQUE (name, version)
)""",
    """CREATE TABLE IF NOT EXISTS files (
    uid INTEGER NOT NULL REFERENCES versions (uid) ON DELETE CASCADE,
    path {text} NOT NULL,
    sha256 {text} NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (uid, path)
)""",
    """CREATE TABLE IF NOT EXISTS aliases (
    name {text} NOT NULL,
    alias {text} NOT NULL,
    version INTEGER NOT NULL,
    updated_at {text} NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES versions (name, version)
)""",
    """CREATE TABLE IF NOT EXISTS alias_history (
    id {id},
    name {text} NOT NULL,
    alias {text} NOT NULL,
    version INTEGER,
    previous INTEGER,
    at {text} NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS meta (
    key {text} PRIMARY KEY,
    value INTEGER NOT NULL
)""",
    "INSERT INTO meta (key, value) VALUES ('generation', 0) ON CONFLICT (key) DO NOTHING",
)

# Statements that bring a catalog from version N-1 to N, run in order inside the opening
# write transaction (on both engines).
_MIGRATIONS: dict[int, tuple[str | _Both, ...]] = {
    2: (
        # The audit trail. Append-only: triggers refuse any UPDATE or DELETE, so no command
        # (nor a bug in one) can rewrite history through this catalog's API.
        """CREATE TABLE IF NOT EXISTS audit (
            id {id},
            at {text} NOT NULL,
            actor {text} NOT NULL,
            action {text} NOT NULL,
            subject {text} NOT NULL,
            before {text},
            after {text}
        )""",
        # SQLite's triggers hold their action; PostgreSQL's call a function, and are
        # statement-level, so an UPDATE/DELETE matching no row (or a TRUNCATE) fails too.
        _Both(
            sqlite=(
                """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
                BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
                """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
                BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
            ),
            postgresql=(
                """CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger
                LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$""",
                """CREATE OR REPLACE TRIGGER audit_no_update BEFORE UPDATE ON audit
                FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""",
                """CREATE OR REPLACE TRIGGER audit_no_delete BEFORE DELETE OR TRUNCATE
                ON audit FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""",
            ),
        ),
        # A canary rides on an alias: `name@alias` keeps its stable target in `aliases`, and
        # `percent` of its callers go to `version` instead until promotion or rollback.
        """CREATE TABLE IF NOT EXISTS canaries (
            name {text} NOT NULL,
            alias {text} NOT NULL,
            version INTEGER NOT NULL,
            percent INTEGER NOT NULL CHECK (percent BETWEEN 1 AND 100),
            updated_at {text} NOT NULL,
            PRIMARY KEY (name, alias),
            FOREIGN KEY (name, version) REFERENCES versions (name, version)
        )""",
    ),
}


def schema_statements(
    dialect: Dialect, from_version: int = 0, to_version: int = SCHEMA_VERSION
) -> list[str]:
    """The statements that bring a catalog at `from_version` (0: empty) to `to_version`."""
    steps: list[str | _Both] = list(_SCHEMA_V1) if from_version == 0 else []
    for version in range(max(from_version, 1) + 1, to_version + 1):
        steps.extend(_MIGRATIONS[version])
    out: list[str] = []
    for step in steps:
        texts: tuple[str, ...] = getattr(step, dialect) if isinstance(step, _Both) else (step,)
        out.extend(text.format(**_TOKENS[dialect]) for text in texts)
    return out


class _Cursor(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Any: ...


class SqlConnection(Protocol):
    """What `CatalogTx` needs of a connection: sqlite3's, or psycopg's behind an adapter."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...
    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...


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
    """The catalog operations, all inside one transaction opened by a backend."""

    def __init__(self, conn: SqlConnection) -> None:
        self._conn = conn

    # -- artifacts and versions ---------------------------------------------------------
    def kind_of(self, name: str) -> str | None:
        row = self._conn.execute("SELECT kind FROM artifacts WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def allocate_version(self, name: str, kind: str, at: str) -> int:
        """The next version number of `name` (creating the artifact), never handed out twice."""
        self._conn.execute(
            "INSERT INTO artifacts (name, kind, next_version, created_at)"
            " VALUES (?, ?, 1, ?) ON CONFLICT (name) DO NOTHING",
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
        ((uid,),) = self._conn.execute(
            "INSERT INTO versions (name, version, base, created_at, card)"
            " VALUES (?, ?, ?, ?, ?) RETURNING uid",
            (name, version, base, created_at, json.dumps(card, sort_keys=True)),
        ).fetchall()
        uid = int(uid)
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
