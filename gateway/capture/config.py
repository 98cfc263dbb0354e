"""Settings of prompt/response capture (`gateway.capture.*`, `TUNEGATE_GATEWAY_CAPTURE_*`).

Capture is off unless `artifacts` names what to keep (privacy: prompts and answers are the
users' data). A chat completion sent with `store: true` is kept whatever `artifacts` says,
for `stored_retention_days`: the client asked for it (OpenAI's stored completions).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

__all__ = ["CaptureConfig", "CaptureRule"]

# Artifact names, `name@version`, base ids, and the glob characters * ? [ ].
_PATTERN = re.compile(r"^[A-Za-z0-9._@*?\[\]-]{1,200}$")
_FIELDS = {"pattern", "retention_days"}


@dataclass(frozen=True)
class CaptureRule:
    """One entry of `gateway.capture.artifacts`, validated."""

    pattern: str
    retention_days: float

    def matches(self, artifact: str) -> bool:
        """`artifact` is what answered: `name@version` or a base model id. A pattern
        matches either the whole of it or the name alone (`telecom` covers every version)."""
        name = artifact.partition("@")[0]
        return fnmatchcase(artifact, self.pattern) or fnmatchcase(name, self.pattern)


def _days(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number of days > 0, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where} must be a number of days > 0, got {value!r}")
    return float(value)


@dataclass
class CaptureConfig:
    """Which answered requests keep their prompt and answer, and for how long."""

    artifacts: list[dict[str, Any]] = field(
        default_factory=list,
        metadata={
            "doc": "Capture rules, first match wins: [{pattern: artifact name, name@version, "
            "base id or a glob like 'ft-*', retention_days: days kept (fractions allowed)}]. "
            "Empty: nothing is captured (except `store: true` chat completions)."
        },
    )
    stored_retention_days: float = field(
        default=30.0,
        metadata={"doc": "Days a `store: true` chat completion is kept (OpenAI keeps 30)."},
    )
    purge_interval_s: float = field(
        default=300.0,
        metadata={"doc": "How often the gateway deletes expired captures (also at start-up)."},
    )
    path: Path | None = field(
        default=None,
        metadata={"doc": "Captures' SQLite file; empty: $TUNEGATE_HOME/captures.sqlite3."},
    )

    def __post_init__(self) -> None:
        _days(self.stored_retention_days, "gateway.capture.stored_retention_days")
        if not (math.isfinite(self.purge_interval_s) and self.purge_interval_s > 0):
            raise ValueError("gateway.capture.purge_interval_s must be > 0")
        self.rules()  # validates `artifacts`

    def rules(self) -> list[CaptureRule]:
        if not isinstance(self.artifacts, list):
            raise ValueError("gateway.capture.artifacts must be a list of rules")
        out: list[CaptureRule] = []
        for i, entry in enumerate(self.artifacts):
            where = f"gateway.capture.artifacts[{i}]"
            if not isinstance(entry, dict):
                raise ValueError(
                    f"{where} must be a mapping {{pattern, retention_days}}, got {entry!r}"
                )
            unknown = set(entry) - _FIELDS
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
            pattern = entry.get("pattern")
            if not isinstance(pattern, str) or not _PATTERN.match(pattern):
                raise ValueError(
                    f"{where}.pattern must be an artifact name, name@version, base id or glob "
                    f"(characters {_PATTERN.pattern}), got {pattern!r}"
                )
            if "retention_days" not in entry:
                raise ValueError(f"{where}.retention_days is required (days to keep captures)")
            out.append(
                CaptureRule(pattern, _days(entry["retention_days"], where + ".retention_days"))
            )
        return out
