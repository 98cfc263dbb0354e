"""The gateway's side of capture: which answers to keep, handing them to a background
writer (never the request path), and deleting what has expired."""

from __future__ import annotations

import asyncio
import logging

from gateway.accounting.writer import BatchWriter
from gateway.capture.config import CaptureConfig
from gateway.capture.store import Capture, CaptureStore

__all__ = ["Capturer"]

log = logging.getLogger("tunegate.gateway")

_DAY_S = 86400.0


class Capturer:
    def __init__(self, config: CaptureConfig, store: CaptureStore, flush_interval_s: float = 0.5):
        self.config = config
        self.store = store
        self._rules = config.rules()
        self.writer: BatchWriter[Capture] = BatchWriter(
            store, interval_s=flush_interval_s, name="capture-writer"
        )
        # Operators should see at start-up whose prompts are being kept.
        if self._rules:
            rules = ", ".join(f"{r.pattern} ({r.retention_days:g} d)" for r in self._rules)
            log.info("capture: keeping prompts and answers of %s", rules)
        else:
            log.info("capture: off (only `store: true` chat completions are kept)")

    def retention_s(self, artifact: str, stored: bool) -> float | None:
        """Seconds to keep what `artifact` answered; None: do not capture it. The first
        matching rule decides; a request with `store: true` is kept for the longer of its
        rule's retention and `stored_retention_days`."""
        rule = next((r for r in self._rules if r.matches(artifact)), None)
        days = [rule.retention_days] if rule is not None else []
        if stored:
            days.append(self.config.stored_retention_days)
        return max(days) * _DAY_S if days else None

    def submit(self, capture: Capture) -> None:
        self.writer.submit(capture)

    def flush(self) -> None:
        """Read-your-writes for the capture routes: queued captures reach the file first."""
        self.writer.flush()

    async def purge_forever(self) -> None:
        """Delete expired captures now (start-up) and every `purge_interval_s` after."""
        while True:
            try:
                deleted = await asyncio.to_thread(self.store.purge)
                if deleted:
                    log.info("capture: deleted %d expired capture(s)", deleted)
            except Exception:
                log.exception("capture: purging expired captures failed; will retry")
            await asyncio.sleep(self.config.purge_interval_s)

    def close(self) -> None:
        self.writer.close()
        self.store.close()
