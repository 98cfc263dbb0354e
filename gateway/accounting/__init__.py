"""Per-request accounting: records, their durable store, batching, prices."""

from __future__ import annotations

from pathlib import Path

from gateway.accounting.pricing import PriceBook
from gateway.accounting.records import GroupBy, Status, UsageRecord, UsageSink, UsageTotals
from gateway.accounting.sqlite import SQLiteSink
from gateway.accounting.writer import BatchWriter

__all__ = [
    "BatchWriter",
    "GroupBy",
    "PriceBook",
    "SQLiteSink",
    "Status",
    "UsageRecord",
    "UsageSink",
    "UsageTotals",
    "open_sink",
]


def open_sink(path: Path) -> UsageSink:
    """The configured record store (the embedded SQLite file for now)."""
    return SQLiteSink(path)
