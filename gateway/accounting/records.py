"""What is recorded per request, and the interface every record store implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["GroupBy", "Status", "UsageRecord", "UsageSink", "UsageTotals"]

# ok: answered; rejected: refused before the engine (bad input, unknown model, overload);
# aborted: the client went away; error: failed on our side or in the engine.
Status = Literal["ok", "rejected", "aborted", "error"]
GroupBy = Literal["artifact", "key", "model"]


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One generation request, as billed."""

    request_id: str
    created_at: float  # unix seconds, when the request arrived
    key_id: str | None  # the API key's id (not the key); None without auth
    operation: str  # "chat" or "text_completion"
    requested_model: str  # the `model` field as sent
    artifact: str | None  # resolved `name@version` or base id; None when routing failed
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    queue_ms: float | None  # waiting in the engine's scheduler
    ttft_ms: float | None  # arrival -> first token, as the client sees it
    e2e_ms: float  # arrival -> last byte
    status: Status
    http_status: int
    finish_reason: str | None
    cost_usd: float
    # Monitoring, without keeping any text: for an artifact whose card has a label set, the
    # label the answer names (or "other"); for one with a training profile, the share of
    # prompt tokens its training prompts never used. None when not applicable.
    answer_label: str | None = None
    prompt_oov_share: float | None = None


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Aggregates over one group of records."""

    group: str | None
    requests: int
    errors: int  # records whose status is not "ok"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    ttft_ms_p50: float | None
    ttft_ms_p95: float | None
    cost_usd: float


class UsageSink(Protocol):
    """Durable storage of records: SQLite today, PostgreSQL for several gateways later.

    `write` is called from one background thread; `totals` from any thread.
    """

    def write(self, records: Sequence[UsageRecord]) -> None: ...

    def totals(
        self,
        group_by: GroupBy,
        since: float | None = None,
        until: float | None = None,
        key_id: str | None = None,
    ) -> list[UsageTotals]:
        """Aggregates per group of the records in [since, until); only `key_id`'s if set."""
        ...

    def close(self) -> None: ...
