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


def open_sink(path: Path, url: str | None = None) -> UsageSink:
    """The configured record store: PostgreSQL at `url` (`gateway.accounting.url`, shared
    by several gateways) if set, else the embedded SQLite file at `path`."""
    if url is not None:
        from gateway.accounting.postgres import PostgresSink

        return PostgresSink(url)
    return SQLiteSink(path)
