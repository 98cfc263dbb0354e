"""Operations endpoints: liveness/readiness and the Prometheus exposition."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST

__all__ = ["health", "metrics"]


@get("/health", summary="Ready when every base engine runs", tags=["operations"])
async def health(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    services = request.app.state.services
    router = services.router
    engines = {
        model_id: {"healthy": engine.healthy, "running": engine.running()}
        for model_id, engine in router.bases.items()
    }
    if router.model_engines is not None:
        for model_id, engine in router.model_engines.engines.items():
            engines[model_id] = {"healthy": engine.healthy, "running": engine.running()}
    ready = all(router.bases[b].healthy for b in router.bases) and not services.admission.draining
    body = {
        "status": "ok" if ready else "unavailable",
        "engines": engines,
        "in_flight": services.admission.in_flight,
        "store_generation": router.generation,
    }
    return Response(body, status_code=200 if ready else 503)


# Per-adapter series name every tenant's adapters: with keys, only admin keys may read them.
@get(
    "/metrics",
    summary="Prometheus exposition",
    tags=["operations"],
    include_in_schema=True,
    opt={"admin": True},
)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    body = request.app.state.services.telemetry.exposition()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
