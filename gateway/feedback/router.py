"""HTTP binding of `POST /v1/feedback`."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, post
from litestar.openapi.datastructures import ResponseSpec

from gateway._responses import READ_ERRORS
from gateway.auth import caller
from gateway.feedback.protocol import Feedback, FeedbackRequest
from gateway.feedback.store import FeedbackStore, RequestNotFoundError
from gateway.protocol import ErrorResponse

__all__ = ["post_feedback"]

_ERRORS = {
    **READ_ERRORS,
    404: ResponseSpec(data_container=ErrorResponse, description="Unknown request id"),
}


@post(
    "/v1/feedback",
    status_code=200,
    summary="Rate an answer or give the corrected one, by the request's x-request-id",
    responses=_ERRORS,
    tags=["feedback"],
)
async def post_feedback(request: Request[Any, Any, Any], data: FeedbackRequest) -> Feedback:
    services = request.app.state.services
    feedback: FeedbackStore = request.app.state.feedback
    # Read-your-writes: the record of a request answered a moment ago may still be queued.
    await asyncio.to_thread(services.writer.flush)
    served = await asyncio.to_thread(feedback.served, data.request_id)
    key = caller(request)
    # Another key's request answers exactly like an unknown one: ids are not disclosed.
    if served is None or (key is not None and served.key_id != key.name):
        raise RequestNotFoundError(data.request_id)
    feedback_id, created = await asyncio.to_thread(
        feedback.add, data.request_id, served.key_id, data.rating, data.correction
    )
    services.telemetry.record_feedback(served.artifact, data.rating, data.correction)
    return Feedback(
        id=feedback_id,
        request_id=data.request_id,
        artifact=served.artifact,
        rating=data.rating,
        correction=data.correction,
        created_at=int(created),
    )
