"""Feedback rows in the accounting database, next to the `requests` table they refer to."""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import APIError

__all__ = ["FeedbackStore", "RequestNotFoundError", "ServedRequest"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    key_id TEXT,
    created_at REAL NOT NULL,
    rating REAL,
    correction TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request_id ON feedback (request_id);
"""


class RequestNotFoundError(APIError):
    status_code = 404
    type = "invalid_request_error"
    code = "request_not_found"

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"No request with id {request_id!r} was served to this API key.", param="request_id"
        )


@dataclass(frozen=True)
class ServedRequest:
    request_id: str
    key_id: str | None
    artifact: str | None


class FeedbackStore:
    """Reads the accounting `requests` table, appends to `feedback`, in the same file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        conn = self._connect()
        try:
            conn.executescript(_SCHEMA)
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        # A connection per call: calls come from worker threads, a few a second at most.
        return sqlite3.connect(self.path, timeout=30.0)

    def served(self, request_id: str) -> ServedRequest | None:
        conn = self._connect()
        try:
            row = conn.execute(
                "SELECT request_id, key_id, artifact FROM requests WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        finally:
            conn.close()
        return None if row is None else ServedRequest(*row)

    def add(
        self, request_id: str, key_id: str | None, rating: float | None, correction: str | None
    ) -> tuple[str, float]:
        """Store one piece of feedback (several per request are kept, newest last)."""
        feedback_id = f"fb-{uuid.uuid4().hex}"
        now = time.time()
        conn = self._connect()
        try:
            with conn:
                conn.execute(
                    "INSERT INTO feedback (id, request_id, key_id, created_at, rating, correction)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (feedback_id, request_id, key_id, now, rating, correction),
                )
        finally:
            conn.close()
        return feedback_id, now
