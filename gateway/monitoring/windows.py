"""Per artifact version and time window: the figures of the accounting database.

Reads the `requests` table the gateway's accounting writes (and `feedback` beside it); never
writes, so `tunegate monitor` can read a live gateway's file. Windows are [start, end) slices
of `window_s` seconds from `since`; the last one ends at `until`.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from adapters_store.profile import LENGTH_EDGES, length_bucket
from gateway.accounting.sqlite import percentile

__all__ = ["Selector", "WindowStats", "read_windows"]


@dataclass(frozen=True)
class Selector:
    """Which records: every version of `name` and the `artifacts` listed; every store
    artifact's when empty."""

    name: str | None = None
    artifacts: tuple[str, ...] = ()


@dataclass
class WindowStats:
    """One artifact version over one window (or over the whole range)."""

    artifact: str
    start: float
    end: float
    requests: int = 0
    errors: int = 0  # records whose status is not "ok"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    # Latency and drift are over answered requests only: a refusal answered in 1 ms is
    # neither a latency anyone waited for nor traffic the model saw.
    latencies_ms: list[float] = field(default_factory=list, repr=False)  # sorted
    ratings: int = 0
    rating_sum: float = 0.0
    corrections: int = 0
    label_counts: Counter[str] = field(default_factory=Counter)
    length_counts: list[int] = field(default_factory=lambda: [0] * (len(LENGTH_EDGES) + 1))
    answered_prompt_tokens: int = 0  # prompt tokens of answered requests (length drift)
    oov_sum: float = 0.0
    oov_requests: int = 0  # answered requests that recorded an OOV share

    @property
    def latency_ms_p50(self) -> float | None:
        return percentile(self.latencies_ms, 0.5)

    @property
    def latency_ms_p95(self) -> float | None:
        return percentile(self.latencies_ms, 0.95)

    @property
    def mean_rating(self) -> float | None:
        return self.rating_sum / self.ratings if self.ratings else None

    @property
    def oov_share(self) -> float | None:
        return self.oov_sum / self.oov_requests if self.oov_requests else None

    def merge(self, other: WindowStats) -> None:
        """Add `other`'s figures (a window of the same artifact) into these."""
        for name in (
            "requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd", "ratings",
            "rating_sum", "corrections", "answered_prompt_tokens", "oov_sum", "oov_requests",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latencies_ms = sorted(self.latencies_ms + other.latencies_ms)
        self.label_counts.update(other.label_counts)
        self.length_counts = [
            a + b for a, b in zip(self.length_counts, other.length_counts, strict=True)
        ]


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def read_windows(
    path: Path,
    selector: Selector,
    since: float,
    until: float,
    window_s: float,
    *,
    latencies: bool = True,
) -> tuple[dict[str, list[WindowStats]], dict[str, WindowStats]]:
    """(windows with traffic per artifact, oldest first; totals per artifact) over
    [since, until). `latencies=False` skips the one per-row read (the drift gauges need
    none of it).

    SQLite aggregates per (artifact, window): the gateway reruns this every few seconds over
    an hour of records, so no per-row Python work but the latencies.
    """
    if window_s <= 0 or until <= since:
        raise ValueError("need window_s > 0 and since < until")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no accounting database at {path}: has the gateway run?")
    match, margs = _match(selector)
    # w: the window index; created_at >= since, so the cast is a floor.
    w = "CAST((r.created_at - ?) / ? AS INTEGER)"
    where = f"({match}) AND r.created_at >= ? AND r.created_at < ?"
    args = [since, window_s, *margs, since, until]
    windows: dict[str, dict[int, WindowStats]] = {}

    def slot(artifact: str, i: int) -> WindowStats:
        per = windows.setdefault(artifact, {})
        if i not in per:
            start = since + i * window_s
            per[i] = WindowStats(artifact, start, min(start + window_s, until))
        return per[i]

    conn = sqlite3.connect(path, timeout=30.0)
    try:
        have = _columns(conn, "requests")
        # A database from before the monitoring columns reads as if none were recorded.
        label = "r.answer_label" if "answer_label" in have else "NULL"
        oov = "r.prompt_oov_share" if "prompt_oov_share" in have else "NULL"
        ok = "r.status = 'ok'"
        for row in conn.execute(
            f"SELECT r.artifact, {w}, COUNT(*), SUM(r.status != 'ok'), SUM(r.prompt_tokens), "
            f"SUM(r.completion_tokens), SUM(r.cost_usd), "
            f"SUM(CASE WHEN {ok} THEN r.prompt_tokens ELSE 0 END), "
            f"SUM(CASE WHEN {ok} THEN {oov} END), COUNT(CASE WHEN {ok} THEN {oov} END) "
            f"FROM requests r WHERE {where} GROUP BY 1, 2",
            args,
        ):
            stats = slot(row[0], row[1])
            (stats.requests, stats.errors, stats.prompt_tokens, stats.completion_tokens) = row[2:6]
            stats.cost_usd, stats.answered_prompt_tokens = row[6] or 0.0, row[7] or 0
            stats.oov_sum, stats.oov_requests = row[8] or 0.0, row[9]
        for artifact, i, value, n in conn.execute(
            f"SELECT r.artifact, {w}, {label}, COUNT(*) FROM requests r "
            f"WHERE {where} AND {ok} AND {label} IS NOT NULL GROUP BY 1, 2, 3",
            args,
        ):
            slot(artifact, i).label_counts[value] = n
        # Per distinct prompt length (a few hundred values), bucketed here.
        for artifact, i, tokens, n in conn.execute(
            f"SELECT r.artifact, {w}, r.prompt_tokens, COUNT(*) FROM requests r "
            f"WHERE {where} AND {ok} GROUP BY 1, 2, 3",
            args,
        ):
            slot(artifact, i).length_counts[length_bucket(tokens)] += n
        if latencies:
            for artifact, i, e2e in conn.execute(
                f"SELECT r.artifact, {w}, r.e2e_ms FROM requests r WHERE {where} AND {ok} "
                f"ORDER BY 1, 2, 3",
                args,
            ):
                slot(artifact, i).latencies_ms.append(e2e)
        if _columns(conn, "feedback"):
            # Feedback counts in the window of the request it is about.
            for artifact, i, n, rating_sum, corrections in conn.execute(
                f"SELECT r.artifact, {w}, COUNT(f.rating), SUM(f.rating), "
                f"COUNT(NULLIF(f.correction, '')) FROM feedback f "
                f"JOIN requests r ON r.request_id = f.request_id WHERE {where} GROUP BY 1, 2",
                args,
            ):
                stats = slot(artifact, i)
                stats.ratings, stats.rating_sum, stats.corrections = (
                    n,
                    rating_sum or 0.0,
                    corrections,
                )
    finally:
        conn.close()

    ordered = {a: [per[i] for i in sorted(per)] for a, per in sorted(windows.items())}
    totals: dict[str, WindowStats] = {}
    for artifact, per_window in ordered.items():
        total = totals[artifact] = WindowStats(artifact, since, until)
        for stats in per_window:
            total.merge(stats)
    return ordered, totals


def _match(selector: Selector) -> tuple[str, list[str | int]]:
    clauses: list[str] = []
    args: list[str | int] = []
    if selector.name is not None:
        # substr, not LIKE: `_` is a wildcard in LIKE and a legal character in names.
        prefix = f"{selector.name}@"
        clauses.append("substr(r.artifact, 1, ?) = ?")
        args += [len(prefix), prefix]
    if selector.artifacts:
        clauses.append(f"r.artifact IN ({', '.join('?' * len(selector.artifacts))})")
        args += list(selector.artifacts)
    if not clauses:
        return "instr(r.artifact, '@') > 0", args  # every store artifact; not base models
    return " OR ".join(clauses), args
