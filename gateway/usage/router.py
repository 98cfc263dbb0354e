"""HTTP binding of the usage report."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.params import Parameter

from gateway._responses import READ_ERRORS
from gateway.protocol import UsageReport
from gateway.usage.serving import usage_report

__all__ = ["get_usage"]


@get(
    "/v1/usage",
    summary="Requests, tokens, latency percentiles and cost, grouped",
    responses=READ_ERRORS,
    tags=["accounting"],
)
async def get_usage(
    request: Request[Any, Any, Any],
    group_by: str = Parameter(
        default="artifact", description="artifact (name@version), key (API key id) or model"
    ),
    since: str | None = Parameter(
        default=None, description="Only requests that arrived at or after this time"
    ),
    until: str | None = Parameter(default=None, description="Only requests before this time"),
) -> UsageReport:
    services = request.app.state.services
    return await usage_report(services.sink, services.writer, group_by, since, until)
