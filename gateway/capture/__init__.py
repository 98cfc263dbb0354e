"""Prompt/response capture: off by default, on per artifact with a retention period
(`gateway.capture`), and always for chat completions sent with `store: true`. Kept in
`$TUNEGATE_HOME/captures.sqlite3`, deleted when expired or on request (per request id).

`gateway.config` imports this package for its section, so the parts that need the
accounting writer or litestar (`Capturer`, the routes in `gateway.capture.router`) load on
first use.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.capture.config import CaptureConfig, CaptureRule
from gateway.capture.store import Capture, CaptureStore

if TYPE_CHECKING:
    from gateway.capture.capturer import Capturer
    from tunegate.config import Settings

__all__ = ["Capture", "CaptureConfig", "CaptureRule", "CaptureStore", "Capturer", "captures_path"]


def captures_path(settings: Settings) -> Path:
    return settings.gateway.capture.path or settings.home / "captures.sqlite3"


def __getattr__(name: str) -> Any:
    if name == "Capturer":
        return importlib.import_module("gateway.capture.capturer").Capturer
    raise AttributeError(f"module 'gateway.capture' has no attribute {name!r}")
