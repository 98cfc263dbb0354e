"""The served ids: base models, and every adapter version, alias and latest name."""

from __future__ import annotations

from typing import Any

from litestar import Request, get

from gateway._responses import READ_ERRORS
from gateway.errors import ModelNotFoundError
from gateway.protocol import ModelCard, ModelList
from gateway.routing import ServedModel

__all__ = ["list_models", "retrieve_model"]


def _card(m: ServedModel) -> ModelCard:
    return ModelCard(
        id=m.id,
        created=m.created,
        parent=m.parent,
        root=m.root,
        kind=m.kind,
        max_model_len=m.max_model_len,
    )


@get("/v1/models", summary="List served models", responses=READ_ERRORS, tags=["models"])
async def list_models(request: Request[Any, Any, Any]) -> ModelList:
    served = await request.app.state.services.router.models()
    return ModelList(data=[_card(m) for m in served])


@get(
    "/v1/models/{model_id:str}",
    summary="Retrieve one served model",
    responses={**READ_ERRORS, 404: READ_ERRORS[400]},
    tags=["models"],
)
async def retrieve_model(model_id: str, request: Request[Any, Any, Any]) -> ModelCard:
    for m in await request.app.state.services.router.models():
        if m.id == model_id:
            return _card(m)
    raise ModelNotFoundError(f"The model {model_id!r} does not exist or is not served here.")
