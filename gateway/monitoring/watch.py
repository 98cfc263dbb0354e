"""The gateway's live drift figures: recomputed in a thread, read by the telemetry gauges.

Every `refresh_s` the report of the last `window_s` is rebuilt from the accounting database
(the same code as `tunegate monitor`), so a scrape of `/metrics` never waits for SQL and
the gauges show what the command would show for that window.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from adapters_store.profile import TrainingProfile
from gateway.monitoring.config import MonitorConfig
from gateway.monitoring.report import ProfileLookup, monitor_report
from gateway.monitoring.windows import Selector

if TYPE_CHECKING:
    from adapters_store.catalog import Store

__all__ = ["DriftSnapshot", "DriftWatch", "store_profiles"]

log = logging.getLogger("tunegate.gateway")


@dataclass(frozen=True)
class DriftSnapshot:
    """One artifact version's drift over the last window (None: not applicable)."""

    label_divergence: float | None
    length_divergence: float | None
    oov_shift: float | None
    flagged: bool


def store_profiles(store: Store | None) -> ProfileLookup:
    """Profiles from the store's cards; base models and unknown versions have none."""

    def lookup(artifact: str) -> TrainingProfile | None:
        if store is None or "@" not in artifact:
            return None
        try:
            card = store.resolve(artifact).card
        except Exception:  # removed since it served, or the store is unreadable
            return None
        return TrainingProfile.from_card(card)

    return lookup


class DriftWatch:
    def __init__(self, accounting: Path, profiles: ProfileLookup, config: MonitorConfig) -> None:
        self.accounting = Path(accounting)
        self.profiles = profiles
        self.config = config
        self.snapshot: dict[str, DriftSnapshot] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self, now: float | None = None) -> dict[str, DriftSnapshot]:
        """Recompute every version's drift over the window ending `now`."""
        now = time.time() if now is None else now
        if not self.accounting.is_file():
            return self.snapshot
        report = monitor_report(
            self.accounting,
            Selector(),
            self.profiles,
            self.config,
            since=now - self.config.window_s,
            until=now,
            window_s=self.config.window_s,
            latencies=False,
        )
        snapshot: dict[str, DriftSnapshot] = {}
        for version in report["versions"]:
            drift = version["total"]["drift"]
            if drift is None:
                continue
            labels = drift.get("labels") or {}
            prompts = drift["prompts"]
            snapshot[version["artifact"]] = DriftSnapshot(
                label_divergence=labels.get("divergence"),
                length_divergence=prompts["length_divergence"],
                oov_shift=prompts["oov_shift"],
                flagged=drift["flagged"],
            )
        self.snapshot = snapshot  # one assignment: readers see the old or the new whole
        return snapshot

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="drift-watch", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:
                log.exception("monitoring: drift could not be computed; will retry")
            self._stop.wait(self.config.refresh_s)
