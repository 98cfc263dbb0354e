"""The embedded record store: one SQLite file in WAL mode."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import astuple, fields
from pathlib import Path
from typing import Any

from gateway.accounting.records import GroupBy, UsageRecord, UsageTotals

__all__ = ["SQLiteSink", "build_totals", "percentile", "totals_queries"]

_COLUMNS = [f.name for f in fields(UsageRecord)]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    key_id TEXT,
    operation TEXT NOT NULL,
    requested_model TEXT NOT NULL,
    artifact TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    queue_ms REAL,
    ttft_ms REAL,
    e2e_ms REAL NOT NULL,
    status TEXT NOT NULL,
    http_status INTEGER NOT NULL,
    finish_reason TEXT,
    cost_usd REAL NOT NULL,
    answer_label TEXT,
    prompt_oov_share REAL
);
CREATE INDEX IF NOT EXISTS requests_created_at ON requests (created_at);
"""
# Columns added after the first release: a database written before them gets them (NULL in
# old rows) when a newer gateway opens it; an older gateway names its columns in INSERT, so
# it still writes to a migrated file.
_ADDED_COLUMNS = {"answer_label": "TEXT", "prompt_oov_share": "REAL"}
# The grouping column is picked from this fixed map, never from request text.
_GROUP_COLUMN: dict[str, str] = {
    "artifact": "artifact",
    "key": "key_id",
    "model": "requested_model",
}


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 1]."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def totals_queries(
    group_by: GroupBy, since: float | None, until: float | None, key_id: str | None
) -> tuple[str, str, list[float | str]]:
    """The two queries behind `UsageSink.totals` (`?` placeholders, SQL that SQLite and
    PostgreSQL both run) and their arguments: per-group sums, then the latencies of the
    successful requests, e2e-ordered per group."""
    column = _GROUP_COLUMN[group_by]
    clauses: list[str] = []
    args: list[float | str] = []
    if since is not None:
        clauses.append("created_at >= ?")
        args.append(since)
    if until is not None:
        clauses.append("created_at < ?")
        args.append(until)
    if key_id is not None:
        clauses.append("key_id = ?")
        args.append(key_id)
    where = " AND ".join(clauses) or "TRUE"
    sums = (
        f"SELECT {column}, COUNT(*), SUM(CASE WHEN status <> 'ok' THEN 1 ELSE 0 END), "
        "SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens), SUM(cost_usd) "
        f"FROM requests WHERE {where} GROUP BY {column}"
    )
    # Percentiles over successful requests only: a 404 answered in 1 ms is not a latency
    # anyone waited for.
    latencies = (
        f"SELECT {column}, e2e_ms, ttft_ms FROM requests WHERE {where} AND status = 'ok' "
        f"ORDER BY {column}, e2e_ms"
    )
    return sums, latencies, args


def build_totals(
    sums: Iterable[Sequence[Any]], latencies: Iterable[Sequence[Any]]
) -> list[UsageTotals]:
    """`UsageTotals` per group from the rows of `totals_queries`, ordered by group (None
    first, then by code point, whatever the database's collation)."""
    sums = list(sums)
    found: dict[str | None, tuple[list[float], list[float]]] = {row[0]: ([], []) for row in sums}
    for group, e2e, ttft in latencies:
        e2e_list, ttft_list = found[group]
        e2e_list.append(e2e)
        if ttft is not None:
            ttft_list.append(ttft)
    out = []
    for group, n, errors, prompt, completion, cached, cost in sums:
        e2e_list, ttft_list = found[group]
        e2e_list.sort()
        ttft_list.sort()
        out.append(
            UsageTotals(
                group=group,
                requests=int(n),
                errors=int(errors or 0),
                prompt_tokens=int(prompt or 0),
                completion_tokens=int(completion or 0),
                cached_tokens=int(cached or 0),
                latency_ms_p50=percentile(e2e_list, 0.5),
                latency_ms_p95=percentile(e2e_list, 0.95),
                ttft_ms_p50=percentile(ttft_list, 0.5),
                ttft_ms_p95=percentile(ttft_list, 0.95),
                cost_usd=float(cost or 0.0),
            )
        )
    out.sort(key=lambda t: (t.group is not None, t.group or ""))
    return out


class SQLiteSink:
    """Records in `requests`; a record whose id is already stored is left as it is."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._conn = self._connect()
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed batch survives a power cut, not only a crash; one fsync per
        # batch (at most a few a second) is cheap.
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        with self._write_lock, self._conn:
            have = {row[1] for row in self._conn.execute("PRAGMA table_info(requests)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in have:
                    self._conn.execute(f"ALTER TABLE requests ADD COLUMN {column} {kind}")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)

    def write(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        sql = (
            f"INSERT OR IGNORE INTO requests ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_COLUMNS))})"
        )
        with self._write_lock, self._conn:
            self._conn.executemany(sql, [astuple(r) for r in records])

    def totals(
        self,
        group_by: GroupBy,
        since: float | None = None,
        until: float | None = None,
        key_id: str | None = None,
    ) -> list[UsageTotals]:
        sums_sql, latencies_sql, args = totals_queries(group_by, since, until, key_id)
        # A connection per query: readers never wait for the writer in WAL mode.
        conn = self._connect()
        try:
            return build_totals(
                conn.execute(sums_sql, args).fetchall(), conn.execute(latencies_sql, args)
            )
        finally:
            conn.close()

    def close(self) -> None:
        with self._write_lock:
            self._conn.close()
