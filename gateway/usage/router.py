"""HTTP binding of the usage report."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.params import Parameter

from gateway._responses import READ_ERRORS
from gateway.auth import caller
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
    key = caller(request)
    # A tenant sees its own requests only (and so only its own adapters); admins see all.
    only_key = key.name if key is not None and not key.admin else None
    return await usage_report(services.sink, services.writer, group_by, since, until, only_key)
