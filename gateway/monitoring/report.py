"""The monitor's report: per artifact version, its windows' figures and drift, as plain data.

`tunegate monitor` prints it (or its JSON); the gateway's drift gauges read the same figures
for one window ending now, so the two agree.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters_store.profile import TrainingProfile
from gateway.monitoring.config import MonitorConfig
from gateway.monitoring.drift import label_drift, text_drift
from gateway.monitoring.windows import Selector, WindowStats, read_windows

__all__ = ["ProfileLookup", "drift_figures", "monitor_report", "window_figures"]

# artifact (`name@version`) -> its training profile, None when its card has none.
ProfileLookup = Callable[[str], TrainingProfile | None]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def drift_figures(
    stats: WindowStats, profile: TrainingProfile | None, config: MonitorConfig
) -> dict[str, Any] | None:
    """Label drift (label tasks) and prompt drift (every task) of one window; None without
    a training profile to compare with."""
    if profile is None:
        return None
    out: dict[str, Any] = {}
    flagged = False
    if profile.labels:
        labels = label_drift(stats.label_counts, profile, config)
        out["labels"] = {
            "answers": labels.answers,
            "divergence": _round(labels.divergence),
            "shares": {k: _round(v) for k, v in labels.shares.items()},
            "expected": {k: _round(v) for k, v in labels.expected.items()},
            "flagged": labels.flagged,
        }
        flagged |= labels.flagged
    prompts = text_drift(
        stats.length_counts,
        stats.answered_prompt_tokens,
        stats.oov_share,
        stats.oov_requests,
        profile,
        config,
    )
    out["prompts"] = {
        k: _round(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(prompts).items()
    }
    # For a label task the answers are the figure that matters; prompt shift is shown
    # as context (a new phrasing that the adapter still labels right is not a problem).
    flagged |= prompts.flagged and not profile.labels
    out["flagged"] = flagged
    return out


def window_figures(
    stats: WindowStats, profile: TrainingProfile | None, config: MonitorConfig
) -> dict[str, Any]:
    return {
        "start": _iso(stats.start),
        "end": _iso(stats.end),
        "requests": stats.requests,
        "errors": stats.errors,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "latency_ms_p50": _round(stats.latency_ms_p50, 1),
        "latency_ms_p95": _round(stats.latency_ms_p95, 1),
        "cost_usd": round(stats.cost_usd, 8),
        "feedback": {
            "ratings": stats.ratings,
            "mean_rating": _round(stats.mean_rating),
            "corrections": stats.corrections,
        },
        "drift": drift_figures(stats, profile, config),
    }


def monitor_report(
    accounting: Path,
    selector: Selector,
    profiles: ProfileLookup,
    config: MonitorConfig,
    *,
    since: float,
    until: float | None = None,
    window_s: float | None = None,
    latencies: bool = True,
) -> dict[str, Any]:
    """Every version the selector matches that has traffic in [since, until)."""
    until = time.time() if until is None else until
    window_s = window_s or config.window_s
    windows, totals = read_windows(
        accounting, selector, since, until, window_s, latencies=latencies
    )
    versions = []
    for artifact, total in totals.items():
        profile = profiles(artifact)
        task = None if profile is None else ("label" if profile.labels else "text")
        versions.append(
            {
                "artifact": artifact,
                "task": task,
                "labels": list(profile.labels) if profile is not None else [],
                "total": window_figures(total, profile, config),
                "windows": [window_figures(w, profile, config) for w in windows[artifact]],
            }
        )
    return {
        "since": _iso(since),
        "until": _iso(until),
        "window_s": window_s,
        "thresholds": {
            "label": config.label_threshold,
            "length": config.length_threshold,
            "oov": config.oov_threshold,
            "min_requests": config.min_requests,
        },
        "versions": versions,
    }
