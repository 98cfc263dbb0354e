"""Captured prompts and answers: their own SQLite file, apart from accounting.

Apart because the content is the users' data while accounting is only numbers: the file is
created readable by its owner only, can be wiped or kept on other storage without touching
the bills, and its purges never contend with the accounting writer.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["Capture", "CaptureStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS captures (
    request_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    key_id TEXT,
    operation TEXT NOT NULL,
    requested_model TEXT NOT NULL,
    artifact TEXT NOT NULL,
    request TEXT NOT NULL,
    system_prompt TEXT,
    response TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS captures_expires_at ON captures (expires_at);
CREATE INDEX IF NOT EXISTS captures_created_at ON captures (created_at);
"""
_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Capture:
    """One answered request as it was asked and answered."""

    request_id: str
    created_at: float  # unix seconds, when the request arrived
    expires_at: float  # deleted after this (retention of the rule or of `store: true`)
    key_id: str | None  # the API key's name; None without auth
    operation: str  # "chat" or "text_completion"
    requested_model: str  # the `model` field as sent
    artifact: str  # what answered: `name@version` or a base id
    request: Mapping[str, Any]  # {"messages": [...]} or {"prompt": ...}, as sent
    system_prompt: str | None  # the artifact's system prompt the gateway put first, if any
    response: str  # the answer's text (a stream's assembled deltas)
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    stored: bool  # sent with `store: true`
    metadata: Mapping[str, str] = field(default_factory=dict)

    def conversation(self, with_system_prompt: bool = False) -> list[dict[str, str]]:
        """A chat capture's messages as {role, content} (`developer` read as `system`);
        `with_system_prompt`: as the model saw them, the artifact's prompt first."""
        out: list[dict[str, str]] = []
        for message in self.request.get("messages", []):
            content = message.get("content", "")
            if isinstance(content, list):
                content = "".join(part.get("text", "") for part in content)
            role = "system" if message.get("role") == "developer" else message.get("role")
            out.append({"role": str(role), "content": str(content)})
        has_system = any(m["role"] == "system" for m in out)
        if with_system_prompt and self.system_prompt and not has_system:
            out.insert(0, {"role": "system", "content": self.system_prompt})
        return out


_COLUMNS = [f.name for f in fields(Capture)]


def _row(capture: Capture) -> tuple[Any, ...]:
    values = dict(zip(_COLUMNS, astuple(capture), strict=True))
    values["request"] = json.dumps(capture.request, separators=(",", ":"))
    values["metadata"] = json.dumps(dict(capture.metadata), separators=(",", ":"))
    values["stored"] = int(capture.stored)
    return tuple(values[c] for c in _COLUMNS)


def _capture(row: sqlite3.Row) -> Capture:
    values = dict(row)
    values["request"] = json.loads(values["request"])
    values["metadata"] = json.loads(values["metadata"])
    values["stored"] = bool(values["stored"])
    return Capture(**values)


def _create_private(path: Path) -> None:
    """Create the file readable by its owner only; SQLite gives its -wal/-shm files the
    same mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class CaptureStore:
    """`write` (from one writer thread) and every read take short connections or the
    write lock; expired rows are invisible to reads even before `purge` deletes them."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        _create_private(self.path)
        self._write_lock = threading.Lock()
        self._conn = self._connect()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        # A removed capture must be gone from the disk, not only from queries: deleted
        # content is overwritten with zeros (and see `_erase` for the WAL).
        self._conn.execute("PRAGMA secure_delete=ON")
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: captures schema {version} is newer than this tunegate "
                f"({_SCHEMA_VERSION}); upgrade tunegate"
            )
        with self._conn:
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        return conn

    def write(self, captures: Sequence[Capture]) -> None:
        if not captures:
            return
        sql = (
            f"INSERT OR IGNORE INTO captures ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_COLUMNS))})"
        )
        with self._write_lock, self._conn:
            self._conn.executemany(sql, [_row(c) for c in captures])

    def delete(self, request_id: str) -> bool:
        """Remove one request's capture; False if there was none."""
        with self._write_lock:
            with self._conn:
                cursor = self._conn.execute(
                    "DELETE FROM captures WHERE request_id = ?", (request_id,)
                )
            if cursor.rowcount:
                self._erase()
        return cursor.rowcount > 0

    def set_metadata(self, request_id: str, metadata: Mapping[str, str]) -> bool:
        """Replace one capture's metadata; False if there is no such capture."""
        with self._write_lock, self._conn:
            cursor = self._conn.execute(
                "UPDATE captures SET metadata = ? WHERE request_id = ?",
                (json.dumps(dict(metadata), separators=(",", ":")), request_id),
            )
        return cursor.rowcount > 0

    def purge(self, now: float | None = None) -> int:
        """Delete every capture past its retention; returns how many."""
        with self._write_lock:
            with self._conn:
                cursor = self._conn.execute(
                    "DELETE FROM captures WHERE expires_at <= ?", (_now(now),)
                )
            if cursor.rowcount:
                self._erase()
        return cursor.rowcount

    def _erase(self) -> None:
        """Copy the zeroed pages into the file and empty the WAL, whose older frames still
        hold the deleted content (a reader holding an old snapshot can delay this; the
        next removal or purge finishes it)."""
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def find(
        self,
        *,
        stored: bool | None = None,
        operation: str | None = None,
        key_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        metadata: Mapping[str, str] | None = None,
        model: str | None = None,
        artifact: str | None = None,
        after: str | None = None,
        descending: bool = False,
        limit: int | None = None,
        now: float | None = None,
    ) -> list[Capture]:
        """Live captures, oldest first (`descending`: newest first), filtered in SQL by
        the arguments that are set: `metadata` holds every pair given; `model` is the model
        as requested, the version that answered or its name; `artifact` is the version that
        answered or its name; `after` is the request id the page starts after (a
        `LookupError` if it is not a live capture)."""
        clauses = ["expires_at > ?"]
        args: list[Any] = [_now(now)]
        for clause, value in (
            ("stored = ?", None if stored is None else int(stored)),
            ("operation = ?", operation),
            ("key_id = ?", key_id),
            ("created_at >= ?", since),
            ("created_at < ?", until),
        ):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        for key, value in (metadata or {}).items():
            # json_each: metadata keys are arbitrary text, which a JSON path cannot quote.
            clauses.append(
                "EXISTS (SELECT 1 FROM json_each(captures.metadata) AS m "
                "WHERE m.key = ? AND m.value = ?)"
            )
            args += [key, value]
        name_of_artifact = "substr(artifact, 1, instr(artifact || '@', '@') - 1)"
        if model is not None:
            clauses.append(f"(requested_model = ? OR artifact = ? OR {name_of_artifact} = ?)")
            args += [model, model, model]
        if artifact is not None:
            clauses.append(f"(artifact = ? OR {name_of_artifact} = ?)")
            args += [artifact, artifact]
        order = "DESC" if descending else "ASC"
        if after is not None:
            start = self.get(after, now)
            if start is None:
                raise LookupError(f"no capture {after!r} to start after")
            clauses.append(f"(created_at, request_id) {'<' if descending else '>'} (?, ?)")
            args += [start.created_at, start.request_id]
        sql = (
            f"SELECT {', '.join(_COLUMNS)} FROM captures WHERE {' AND '.join(clauses)} "
            f"ORDER BY created_at {order}, request_id {order}"
        )
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return self._select(sql, args)

    def get(self, request_id: str, now: float | None = None) -> Capture | None:
        rows = self._select(
            f"SELECT {', '.join(_COLUMNS)} FROM captures WHERE request_id = ? AND expires_at > ?",
            [request_id, _now(now)],
        )
        return rows[0] if rows else None

    def _select(self, sql: str, args: Sequence[Any]) -> list[Capture]:
        # A connection per read: readers never wait for the writer in WAL mode.
        conn = self._connect()
        try:
            rows = conn.execute(sql, args).fetchall()
        finally:
            conn.close()
        return [_capture(row) for row in rows]

    def close(self) -> None:
        with self._write_lock:
            self._conn.close()


def _now(now: float | None) -> float:
    return time.time() if now is None else now
