"""Per artifact version and time window: the figures of the accounting database.

Reads the `requests` table the gateway's accounting writes (and `feedback` beside it); never
writes, so `tunegate monitor` can read a live gateway's file. Windows are [start, end) slices
of `window_s` seconds from `since`; the last one ends at `until`.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from adapters_store.profile import LENGTH_EDGES, length_bucket
from gateway.accounting.sqlite import percentile

__all__ = ["Selector", "WindowStats", "read_windows"]


@dataclass(frozen=True)
class Selector:
    """Which records: every version of `name` and the `artifacts` listed; all when empty."""

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
    latencies_ms: list[float] = field(default_factory=list, repr=False)  # answered only
    ratings: list[float] = field(default_factory=list, repr=False)
    corrections: int = 0
    label_counts: Counter[str] = field(default_factory=Counter)
    length_counts: list[int] = field(default_factory=lambda: [0] * (len(LENGTH_EDGES) + 1))
    answered_prompt_tokens: int = 0  # prompt tokens of answered requests (length drift)
    oov_shares: list[float] = field(default_factory=list, repr=False)

    @property
    def latency_ms_p50(self) -> float | None:
        return percentile(sorted(self.latencies_ms), 0.5)

    @property
    def latency_ms_p95(self) -> float | None:
        return percentile(sorted(self.latencies_ms), 0.95)

    @property
    def mean_rating(self) -> float | None:
        return sum(self.ratings) / len(self.ratings) if self.ratings else None

    def add_request(
        self,
        status: str,
        prompt: int,
        completion: int,
        e2e_ms: float,
        cost: float,
        label: str | None,
        oov: float | None,
    ) -> None:
        self.requests += 1
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cost_usd += cost
        if status != "ok":
            self.errors += 1
            return
        # Latency and drift over answered requests only: a refusal answered in 1 ms is
        # neither a latency anyone waited for nor traffic the model saw.
        self.latencies_ms.append(e2e_ms)
        self.length_counts[length_bucket(prompt)] += 1
        self.answered_prompt_tokens += prompt
        if label is not None:
            self.label_counts[label] += 1
        if oov is not None:
            self.oov_shares.append(oov)

    def add_feedback(self, rating: float | None, correction: str | None) -> None:
        if rating is not None:
            self.ratings.append(rating)
        if correction:
            self.corrections += 1


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def read_windows(
    path: Path,
    selector: Selector,
    since: float,
    until: float,
    window_s: float,
) -> tuple[dict[str, list[WindowStats]], dict[str, WindowStats]]:
    """(windows with traffic per artifact, oldest first; totals per artifact) over
    [since, until)."""
    if window_s <= 0 or until <= since:
        raise ValueError("need window_s > 0 and since < until")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no accounting database at {path}: has the gateway run?")
    conn = sqlite3.connect(path, timeout=30.0)
    try:
        have = _columns(conn, "requests")
        # A database from before the monitoring columns reads as if none were recorded.
        label = "answer_label" if "answer_label" in have else "NULL"
        oov = "prompt_oov_share" if "prompt_oov_share" in have else "NULL"
        match, args = _match(selector)
        rows = conn.execute(
            f"SELECT artifact, created_at, status, prompt_tokens, completion_tokens, e2e_ms, "
            f"cost_usd, {label}, {oov} FROM requests "
            f"WHERE ({match}) AND created_at >= ? AND created_at < ? ORDER BY created_at",
            [*args, since, until],
        ).fetchall()
        feedback: list[tuple[str, float, float | None, str | None]] = []
        if _columns(conn, "feedback"):
            feedback = conn.execute(
                f"SELECT r.artifact, r.created_at, f.rating, f.correction FROM feedback f "
                f"JOIN requests r ON r.request_id = f.request_id "
                f"WHERE ({match.replace('artifact', 'r.artifact')}) "
                f"AND r.created_at >= ? AND r.created_at < ?",
                [*args, since, until],
            ).fetchall()
    finally:
        conn.close()

    windows: dict[str, dict[int, WindowStats]] = {}
    totals: dict[str, WindowStats] = {}

    def slots(artifact: str, created: float) -> tuple[WindowStats, WindowStats]:
        i = math.floor((created - since) / window_s)
        per = windows.setdefault(artifact, {})
        if i not in per:
            start = since + i * window_s
            per[i] = WindowStats(artifact, start, min(start + window_s, until))
        if artifact not in totals:
            totals[artifact] = WindowStats(artifact, since, until)
        return per[i], totals[artifact]

    for artifact, created, status, prompt, completion, e2e, cost, lab, share in rows:
        for stats in slots(artifact, created):
            stats.add_request(status, prompt, completion, e2e, cost, lab, share)
    for artifact, created, rating, correction in feedback:
        for stats in slots(artifact, created):
            stats.add_feedback(rating, correction)
    ordered = {a: [per[i] for i in sorted(per)] for a, per in sorted(windows.items())}
    return ordered, dict(sorted(totals.items()))


def _match(selector: Selector) -> tuple[str, list[str | int]]:
    clauses: list[str] = []
    args: list[str | int] = []
    if selector.name is not None:
        # substr, not LIKE: `_` is a wildcard in LIKE and a legal character in names.
        prefix = f"{selector.name}@"
        clauses.append("substr(artifact, 1, ?) = ?")
        args += [len(prefix), prefix]
    if selector.artifacts:
        clauses.append(f"artifact IN ({', '.join('?' * len(selector.artifacts))})")
        args += list(selector.artifacts)
    if not clauses:
        return "artifact IS NOT NULL", args
    return " OR ".join(clauses), args
