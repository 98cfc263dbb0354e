"""`GET /v1/models`."""

from gateway.models.router import list_models, retrieve_model

__all__ = ["list_models", "retrieve_model"]
