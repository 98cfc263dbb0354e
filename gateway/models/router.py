"""The served ids: base models, and every adapter version, alias and latest name."""

from __future__ import annotations

from typing import Any

from litestar import Request, get

from gateway._responses import READ_ERRORS
from gateway.auth import caller, visible
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


async def _served(request: Request[Any, Any, Any]) -> list[ServedModel]:
    """What the caller may see: base models, and the artifacts its key is scoped to."""
    key = caller(request)
    served: list[ServedModel] = await request.app.state.services.router.models()
    return [m for m in served if m.kind == "base" or visible(key, m.root.partition("@")[0])]


@get("/v1/models", summary="List served models", responses=READ_ERRORS, tags=["models"])
async def list_models(request: Request[Any, Any, Any]) -> ModelList:
    return ModelList(data=[_card(m) for m in await _served(request)])


@get(
    "/v1/models/{model_id:str}",
    summary="Retrieve one served model",
    responses={**READ_ERRORS, 404: READ_ERRORS[400]},
    tags=["models"],
)
async def retrieve_model(model_id: str, request: Request[Any, Any, Any]) -> ModelCard:
    for m in await _served(request):
        if m.id == model_id:
            return _card(m)
    raise ModelNotFoundError(f"The model {model_id!r} does not exist or is not served here.")
