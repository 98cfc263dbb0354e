"""Query parsing and aggregation behind `GET /v1/usage`."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

from gateway.accounting import BatchWriter, GroupBy, UsageSink
from gateway.errors import BadRequestError
from gateway.protocol import UsageGroup, UsageReport

__all__ = ["parse_time", "usage_report"]

_GROUPS: tuple[GroupBy, ...] = ("artifact", "key", "model")


def parse_time(value: str | None, param: str) -> float | None:
    """Unix seconds or an ISO 8601 date/time (naive means UTC)."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise BadRequestError(
                f"{param} must be unix seconds or an ISO 8601 time, got {value!r}", param=param
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if not math.isfinite(seconds):
        raise BadRequestError(f"{param} must be a finite number", param=param)
    return seconds


async def usage_report(
    sink: UsageSink,
    writer: BatchWriter,
    group_by: str,
    since: str | None,
    until: str | None,
    key_id: str | None = None,
) -> UsageReport:
    if group_by not in _GROUPS:
        raise BadRequestError(
            f"group_by must be one of {', '.join(_GROUPS)}, got {group_by!r}", param="group_by"
        )
    start, end = parse_time(since, "since"), parse_time(until, "until")
    # Read-your-writes: records still queued for the writer are included.
    await asyncio.to_thread(writer.flush)
    totals = await asyncio.to_thread(
        sink.totals,
        group_by,  # type: ignore[arg-type]
        start,
        end,
        key_id,
    )
    return UsageReport(
        group_by=group_by,  # type: ignore[arg-type]
        since=start,
        until=end,
        data=[
            UsageGroup(
                group=t.group,
                requests=t.requests,
                errors=t.errors,
                prompt_tokens=t.prompt_tokens,
                completion_tokens=t.completion_tokens,
                cached_tokens=t.cached_tokens,
                total_tokens=t.prompt_tokens + t.completion_tokens,
                latency_ms_p50=t.latency_ms_p50,
                latency_ms_p95=t.latency_ms_p95,
                ttft_ms_p50=t.ttft_ms_p50,
                ttft_ms_p95=t.ttft_ms_p95,
                cost_usd=t.cost_usd,
            )
            for t in totals
        ],
    )
