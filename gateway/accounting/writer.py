"""Records leave the request path through a queue; one thread writes them in batches.

Generic over the record type: accounting records and captured content (gateway/capture)
use one writer each.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

__all__ = ["BatchWriter", "RecordSink"]

R = TypeVar("R")
R_contra = TypeVar("R_contra", contravariant=True)

log = logging.getLogger("tunegate.gateway")

# Records kept in memory while the sink fails (disk full, locked file); beyond this the
# oldest are dropped, loudly, rather than growing without bound.
_MAX_BACKLOG = 100_000


class _Flush:
    """A marker in the queue: set once everything queued before it is written."""

    def __init__(self) -> None:
        self.done = threading.Event()


class RecordSink(Protocol[R_contra]):
    """Where a writer's batches go (called from the writer's one thread)."""

    def write(self, records: Sequence[R_contra]) -> None: ...


class BatchWriter(Generic[R]):
    """`submit` never blocks; records reach the sink within `interval_s`."""

    def __init__(
        self,
        sink: RecordSink[R],
        interval_s: float = 0.5,
        batch_size: int = 256,
        name: str = "accounting-writer",
    ) -> None:
        self.sink = sink
        self.interval_s = interval_s
        self.batch_size = batch_size
        self._queue: queue.SimpleQueue[R | _Flush | None] = queue.SimpleQueue()
        self._backlog: deque[R] = deque()
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, record: R) -> None:
        if self._closed:
            # After close there is no thread to hand it to: write it here, once.
            self.sink.write([record])
            return
        self._queue.put(record)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Block until every record submitted before the call is written (or failed)."""
        if self._closed:
            return True
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write everything still queued, then stop the thread."""
        if self._closed:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._closed = True
        if self._backlog:
            log.error("accounting: %d record(s) could not be written", len(self._backlog))

    def _run(self) -> None:
        stop = False
        while not stop:
            deadline = time.monotonic() + self.interval_s
            markers: list[_Flush] = []
            taken = 0
            while taken < self.batch_size:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                if isinstance(item, _Flush):
                    markers.append(item)
                    break
                self._backlog.append(item)
                taken += 1
            written = self._write_backlog()
            for m in markers:
                m.done.set()
            if not written and not stop:
                time.sleep(self.interval_s)  # the sink is failing: do not spin
        # Drain whatever raced in behind the stop sentinel.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Flush):
                item.done.set()
            elif item is not None:
                self._backlog.append(item)
        self._write_backlog()

    def _write_backlog(self) -> bool:
        while self._backlog:
            batch = [self._backlog[i] for i in range(min(self.batch_size, len(self._backlog)))]
            try:
                self.sink.write(batch)
            except Exception:
                log.exception("accounting: writing %d record(s) failed; will retry", len(batch))
                self._trim()
                return False
            for _ in batch:
                self._backlog.popleft()
        return True

    def _trim(self) -> None:
        excess = len(self._backlog) - _MAX_BACKLOG
        if excess > 0:
            for _ in range(excess):
                self._backlog.popleft()
            self._dropped += excess
            log.error("accounting: dropped %d record(s) after repeated write failures", excess)
