"""Settings of drift monitoring (`gateway.monitor.*`, `TUNEGATE_GATEWAY_MONITOR_*`).

Shared by `tunegate monitor` and the gateway's drift gauges, so both flag the same windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MonitorConfig"]


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass
class MonitorConfig:
    """Windows and drift thresholds (`gateway.monitor.*`)."""

    window_s: float = field(
        default=3600.0,
        metadata=_doc(
            "Window of `tunegate monitor` (unless --window) and of the gateway's drift gauges, "
            "in seconds."
        ),
    )
    label_threshold: float = field(
        default=0.1,
        metadata=_doc(
            "Label tasks: flag a window whose answer mix has a Jensen-Shannon divergence "
            "(base 2, 0..1) from the training labels at or above this."
        ),
    )
    length_threshold: float = field(
        default=0.1,
        metadata=_doc(
            "Text tasks: flag a window whose prompt-length histogram has a Jensen-Shannon "
            "divergence from the training prompts' at or above this."
        ),
    )
    oov_threshold: float = field(
        default=0.05,
        metadata=_doc(
            "Text tasks: flag a window whose mean share of prompt tokens unseen in training "
            "exceeds the held-out data's by this much or more."
        ),
    )
    min_requests: int = field(
        default=100,
        metadata=_doc(
            "Windows with fewer answered requests show their drift but never flag: a "
            "divergence from a handful of samples is noise (8 labels drawn like training: "
            "JS 99th percentile 0.135 at 30 answers, 0.033 at 100)."
        ),
    )
    refresh_s: float = field(
        default=15.0,
        metadata=_doc("How often the gateway recomputes its drift gauges, in seconds."),
    )

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ValueError(f"gateway.monitor.window_s must be > 0, got {self.window_s}")
        for name in ("label_threshold", "length_threshold", "oov_threshold"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"gateway.monitor.{name} must be in (0, 1], got {value}")
        if self.min_requests < 1:
            raise ValueError(f"gateway.monitor.min_requests must be >= 1, got {self.min_requests}")
        if self.refresh_s <= 0:
            raise ValueError(f"gateway.monitor.refresh_s must be > 0, got {self.refresh_s}")
