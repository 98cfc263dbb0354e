"""Accounting durability when the gateway is killed (SIGKILL: no drain, no flush).

A child process submits records through the real BatchWriter into the real SQLite sink
without ever closing it, and is killed mid-stream. The database must be intact, hold a
gap-free prefix of what was submitted, and miss only records submitted within the last
flush interval (plus scheduling slack on a busy host) before the kill.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

INTERVAL_S = 0.5  # gateway.accounting.flush_interval_s (the default)
# The writer thread may be scheduled late on a loaded 2-core host; the guarantee is
# "one flush interval", this only keeps the test from flaking on scheduling.
SLACK_S = 2.0

_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from gateway.accounting import BatchWriter
    from gateway.accounting.records import UsageRecord
    from gateway.accounting.sqlite import SQLiteSink

    writer = BatchWriter(SQLiteSink(Path(sys.argv[1])), interval_s=float(sys.argv[2]))
    i = 0
    while True:
        writer.submit(UsageRecord(
            request_id=f"r{i:08d}", created_at=time.time(), key_id="k", operation="chat",
            requested_model="m", artifact="m", prompt_tokens=3, completion_tokens=5,
            cached_tokens=0, queue_ms=0.0, ttft_ms=1.0, e2e_ms=2.0, status="ok",
            http_status=200, finish_reason="stop", cost_usd=0.0,
        ))
        print(i, time.monotonic(), flush=True)
        i += 1
        time.sleep(0.002)
    """
)


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db, timeout=30)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
    except sqlite3.OperationalError:  # the table is not created yet
        return 0
    finally:
        conn.close()


def test_sigkill_loses_at_most_the_last_flush_interval(tmp_path: Path) -> None:
    db = tmp_path / "accounting.sqlite3"
    out = tmp_path / "submitted.txt"
    with out.open("w") as sink:
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(db), str(INTERVAL_S)],
            stdout=sink,
            cwd=Path(__file__).resolve().parents[2],
        )
    try:
        deadline = time.monotonic() + 120
        while _count(db) < 300:  # several flushes happened, and it keeps writing
            assert child.poll() is None, "the writer process died on its own"
            assert time.monotonic() < deadline, "no records were flushed"
            time.sleep(0.05)
        killed_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    submitted = [line.split() for line in out.read_text().splitlines() if line.strip()]
    times = {int(i): float(t) for i, t in submitted}
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        ids = sorted(int(r[0][1:]) for r in conn.execute("SELECT request_id FROM requests"))
    finally:
        conn.close()
    assert ids == list(range(len(ids)))  # a gap-free prefix: the oldest are never lost
    lost = [i for i in times if i >= len(ids)]
    oldest_lost_age = killed_at - min(times[i] for i in lost) if lost else 0.0
    print(
        f"\nSIGKILL: submitted {len(times)}, recorded {len(ids)}, lost {len(lost)} "
        f"(the oldest lost was submitted {oldest_lost_age:.2f} s before the kill)"
    )
    assert oldest_lost_age <= INTERVAL_S + SLACK_S
