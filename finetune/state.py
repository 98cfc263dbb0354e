"""Durable state of the fine-tuning API: files, jobs, events, checkpoints in one SQLite file.

The gateway (HTTP side) and the worker processes share `$TUNEGATE_HOME/finetune.sqlite3`
(WAL, so readers never wait for the writer). Every state change is one conditional UPDATE,
which is what makes claiming a queued job atomic across workers and keeps a cancel from being
overwritten by a job finishing at the same moment. Uploaded bytes live in
`$TUNEGATE_HOME/files/<file id>`, written to a temporary name and renamed before the row that
points at them is inserted, so a crash never leaves a row without its content.

`owner` is the caller's API key id when the gateway runs with keys (None without auth); a
caller with a key sees only its own rows, a caller without one sees everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from finetune.names import new_id

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "CheckpointRow",
    "EventRow",
    "FileRow",
    "FileTooLargeError",
    "JobFinishedError",
    "JobRow",
    "JobState",
    "NotFoundError",
    "Page",
]

Status = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE: tuple[Status, ...] = ("validating_files", "queued", "running")
TERMINAL: tuple[Status, ...] = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    owner TEXT,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_details TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT,
    model TEXT NOT NULL,
    training_file TEXT NOT NULL,
    validation_file TEXT,
    suffix TEXT,
    seed INTEGER NOT NULL,
    method TEXT NOT NULL,
    metadata TEXT,
    status TEXT NOT NULL,
    error TEXT,
    fine_tuned_model TEXT,
    store_ref TEXT,
    trained_tokens INTEGER,
    result_files TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    worker TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    run_dir TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT,
    type TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    step INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    fine_tuned_model_checkpoint TEXT NOT NULL,
    path TEXT
);
CREATE INDEX IF NOT EXISTS checkpoints_job ON checkpoints (job_id, seq);
"""


class NotFoundError(LookupError):
    """No such file/job visible to this caller."""


class FileTooLargeError(ValueError):
    """An upload over `finetune.max_file_bytes`; nothing was kept."""


@dataclass(frozen=True)
class FileRow:
    id: str
    owner: str | None
    filename: str
    purpose: str
    bytes: int
    created_at: int
    status: str
    status_details: str | None


@dataclass(frozen=True)
class JobRow:
    id: str
    owner: str | None
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    method: dict[str, Any]  # {"type": "supervised", "supervised": {"hyperparameters": {...}}}
    metadata: dict[str, str] | None
    status: Status
    error: dict[str, Any] | None  # {"code", "message", "param"}
    fine_tuned_model: str | None
    store_ref: str | None
    trained_tokens: int | None
    result_files: list[str]
    created_at: int
    finished_at: int | None
    worker: str | None
    attempts: int
    run_dir: str | None

    @property
    def hyperparameters(self) -> dict[str, Any]:
        method = self.method.get(self.method["type"]) or {}
        return dict(method.get("hyperparameters") or {})


@dataclass(frozen=True)
class EventRow:
    id: str
    job_id: str
    created_at: int
    level: str
    message: str
    data: dict[str, Any] | None
    type: str


@dataclass(frozen=True)
class CheckpointRow:
    id: str
    job_id: str
    created_at: int
    step: int
    metrics: dict[str, Any]
    fine_tuned_model_checkpoint: str
    path: str | None


@dataclass(frozen=True)
class Page:
    data: list[Any] = field(default_factory=list)
    has_more: bool = False


def _now() -> int:
    return int(time.time())


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def _decoded(row: sqlite3.Row, *json_columns: str) -> dict[str, Any]:
    """A row as dataclass fields: without the internal `seq`, JSON columns parsed."""
    values = dict(row)
    values.pop("seq", None)
    for column in json_columns:
        values[column] = _loads(values[column])
    return values


class JobState:
    """Files, jobs, events and checkpoints under one tunegate home; safe across processes.

    A connection per call: calls come from the gateway's thread pool and from the worker,
    and SQLite connections must not be shared across threads.
    """

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.files_dir = self.home / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.home / "finetune.sqlite3"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: the write lock is taken before anything is read."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ------------------------------------------------------------------ files

    def file_path(self, file_id: str) -> Path:
        if "/" in file_id or file_id.startswith("."):
            raise NotFoundError(file_id)
        return self.files_dir / file_id

    def add_file(
        self,
        source: IO[bytes],
        filename: str,
        purpose: str,
        owner: str | None,
        max_bytes: int,
        status: str = "processed",
        status_details: str | None = None,
    ) -> FileRow:
        """Copy `source` under the home (refused past `max_bytes`), then insert its row."""
        file_id = new_id("file")
        final = self.file_path(file_id)
        tmp = final.with_name(f".{file_id}.part")
        size = 0
        try:
            with tmp.open("wb") as out:
                while chunk := source.read(1 << 20):
                    size += len(chunk)
                    if size > max_bytes:
                        raise FileTooLargeError(
                            f"the file is larger than the limit of {max_bytes} bytes "
                            "(finetune.max_file_bytes)"
                        )
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        row = FileRow(file_id, owner, filename, purpose, size, _now(), status, status_details)
        with self._write() as db:
            db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.id,
                    row.owner,
                    row.filename,
                    row.purpose,
                    row.bytes,
                    row.created_at,
                    row.status,
                    row.status_details,
                ),
            )
        return row

    def get_file(self, file_id: str, owner: str | None = None) -> FileRow:
        with self._connect() as db:
            row = db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None or (owner is not None and row["owner"] != owner):
            raise NotFoundError(f"No such File object: {file_id}")
        return FileRow(**dict(row))

    def list_files(
        self,
        owner: str | None = None,
        purpose: str | None = None,
        limit: int = 10000,
        after: str | None = None,
        order: str = "desc",
    ) -> Page:
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if purpose is not None:
            where.append("purpose = ?")
            params.append(purpose)
        direction = "DESC" if order == "desc" else "ASC"
        if after is not None:
            cursor = self.get_file(after, owner)
            op = "<" if order == "desc" else ">"
            where.append(f"(created_at, id) {op} (?, ?)")
            params += [cursor.created_at, cursor.id]
        sql = (
            f"SELECT * FROM files WHERE {' AND '.join(where)} "
            f"ORDER BY created_at {direction}, id {direction} LIMIT ?"
        )
        with self._connect() as db:
            rows = db.execute(sql, (*params, limit + 1)).fetchall()
        return Page([FileRow(**dict(r)) for r in rows[:limit]], len(rows) > limit)

    def delete_file(self, file_id: str, owner: str | None = None) -> None:
        self.get_file(file_id, owner)
        with self._write() as db:
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.file_path(file_id).unlink(missing_ok=True)

    # ------------------------------------------------------------------ jobs

    def create_job(
        self,
        *,
        owner: str | None,
        model: str,
        training_file: str,
        validation_file: str | None,
        suffix: str | None,
        seed: int,
        method: dict[str, Any],
        metadata: dict[str, str] | None,
    ) -> JobRow:
        job_id = new_id("ftjob")
        with self._write() as db:
            db.execute(
                "INSERT INTO jobs (id, owner, model, training_file, validation_file, suffix, "
                "seed, method, metadata, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'validating_files', ?)",
                (
                    job_id,
                    owner,
                    model,
                    training_file,
                    validation_file,
                    suffix,
                    seed,
                    json.dumps(method),
                    json.dumps(metadata) if metadata is not None else None,
                    _now(),
                ),
            )
            self._event(db, job_id, f"Created fine-tuning job: {job_id}")
        return self.get_job(job_id)

    @staticmethod
    def _job(row: sqlite3.Row) -> JobRow:
        return JobRow(**_decoded(row, "method", "metadata", "error", "result_files"))

    def get_job(self, job_id: str, owner: str | None = None) -> JobRow:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or (owner is not None and row["owner"] != owner):
            raise NotFoundError(f"No such fine-tuning job: {job_id}")
        return self._job(row)

    def list_jobs(
        self,
        owner: str | None = None,
        limit: int = 20,
        after: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Page:
        """Newest first; `after` is the id of the last job of the previous page."""
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if after is not None:
            where.append("seq < (SELECT seq FROM jobs WHERE id = ?)")
            params.append(after)
        for key, value in (metadata or {}).items():
            where.append("json_extract(metadata, ?) = ?")
            params += [f"$.{json.dumps(key)}", value]
        sql = f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
        with self._connect() as db:
            rows = db.execute(sql, (*params, limit + 1)).fetchall()
        return Page([self._job(r) for r in rows[:limit]], len(rows) > limit)

    def cancel_job(self, job_id: str, owner: str | None = None) -> JobRow:
        """Cancelled at once when not running; a running job's worker stops at its next step."""
        job = self.get_job(job_id, owner)
        with self._write() as db:
            done = db.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ? "
                "WHERE id = ? AND status IN ('validating_files', 'queued', 'running')",
                (_now(), job.id),
            ).rowcount
            if done:
                self._event(db, job.id, "Fine-tuning job cancelled")
        if not done:
            raise JobFinishedError(f"Job {job_id} has already {job.status}; it cannot be cancelled")
        return self.get_job(job_id)

    # ------------------------------------------------------------------ worker side

    def pending_validation(self) -> list[JobRow]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE status = 'validating_files' ORDER BY seq"
            ).fetchall()
        return [self._job(r) for r in rows]

    def transition(
        self,
        job_id: str,
        from_status: Status | tuple[Status, ...],
        to_status: Status,
        message: str | None = None,
        *,
        level: str = "info",
        **columns: Any,
    ) -> bool:
        """Move a job on only if it is still in `from_status`; False when it moved meanwhile
        (typically: cancelled). `columns` are set in the same transaction."""
        sources = (from_status,) if isinstance(from_status, str) else from_status
        sets = {"status": to_status, **columns}
        if to_status in TERMINAL:
            sets.setdefault("finished_at", _now())
        for key in ("error", "result_files"):
            if key in sets and not isinstance(sets[key], str) and sets[key] is not None:
                sets[key] = json.dumps(sets[key])
        assignments = ", ".join(f"{k} = ?" for k in sets)
        marks = ", ".join("?" for _ in sources)
        with self._write() as db:
            moved = db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({marks})",
                (*sets.values(), job_id, *sources),
            ).rowcount
            if moved and message:
                self._event(db, job_id, message, level=level)
        return bool(moved)

    def claim(self, worker: str) -> JobRow | None:
        """The oldest queued job, now `running` and owned by `worker`; None when idle.
        One IMMEDIATE transaction, so two workers never claim the same job."""
        with self._write() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'running', worker = ?, attempts = attempts + 1 "
                "WHERE id = ?",
                (worker, row["id"]),
            )
            self._event(db, row["id"], "Fine-tuning job started")
        return self.get_job(row["id"])

    def running_jobs(self) -> list[JobRow]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs WHERE status = 'running'").fetchall()
        return [self._job(r) for r in rows]

    def status(self, job_id: str) -> Status:
        with self._connect() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(job_id)
        return row["status"]  # type: ignore[no-any-return]

    def set_columns(self, job_id: str, **columns: Any) -> None:
        assignments = ", ".join(f"{k} = ?" for k in columns)
        with self._write() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*columns.values(), job_id))

    # ------------------------------------------------------------------ events

    @staticmethod
    def _event(
        db: sqlite3.Connection,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        data: dict[str, Any] | None = None,
        type_: str = "message",
    ) -> None:
        db.execute(
            "INSERT INTO events (id, job_id, created_at, level, message, data, type) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                new_id("ftevent"),
                job_id,
                _now(),
                level,
                message,
                json.dumps(data) if data is not None else None,
                type_,
            ),
        )

    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        data: dict[str, Any] | None = None,
        type_: str = "message",
    ) -> None:
        with self._write() as db:
            self._event(db, job_id, message, level=level, data=data, type_=type_)

    def _job_rows(
        self, table: str, job_id: str, owner: str | None, limit: int, after: str | None
    ) -> tuple[list[sqlite3.Row], bool]:
        """A job's events or checkpoints, newest first; `after` is the last id already seen."""
        self.get_job(job_id, owner)
        where, params = "job_id = ?", [job_id]
        if after is not None:
            where += f" AND seq < (SELECT seq FROM {table} WHERE id = ?)"
            params.append(after)
        with self._connect() as db:
            rows = db.execute(
                f"SELECT * FROM {table} WHERE {where} ORDER BY seq DESC LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
        return rows[:limit], len(rows) > limit

    def list_events(
        self, job_id: str, owner: str | None = None, limit: int = 20, after: str | None = None
    ) -> Page:
        rows, more = self._job_rows("events", job_id, owner, limit, after)
        events = [EventRow(**_decoded(r, "data")) for r in rows]
        return Page(events, more)

    # ------------------------------------------------------------------ checkpoints

    def add_checkpoint(
        self, job_id: str, step: int, metrics: dict[str, Any], model_name: str, path: str | None
    ) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO checkpoints (id, job_id, created_at, step, metrics, "
                "fine_tuned_model_checkpoint, path) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (new_id("ftckpt"), job_id, _now(), step, json.dumps(metrics), model_name, path),
            )
            self._event(db, job_id, f"Checkpoint created at step {step}", data={"step": step})

    def list_checkpoints(
        self, job_id: str, owner: str | None = None, limit: int = 10, after: str | None = None
    ) -> Page:
        rows, more = self._job_rows("checkpoints", job_id, owner, limit, after)
        out = [CheckpointRow(**_decoded(r, "metrics")) for r in rows]
        return Page(out, more)

    def copy_file_to(self, file_id: str, dest: Path) -> Path:
        """A private copy for a run, so deleting the upload mid-run changes nothing."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.file_path(file_id), dest)
        return dest


class JobFinishedError(ValueError):
    """Cancel of a job that already succeeded, failed or was cancelled."""
