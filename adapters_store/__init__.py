"""The catalog of base models, adapters and tuned models: versioned, validated, checksummed."""

from adapters_store.bases import BaseModel, BaseRegistry, UnknownBaseError
from adapters_store.config import StoreConfig, default_home

__all__ = [
    "BaseModel",
    "BaseRegistry",
    "StoreConfig",
    "UnknownBaseError",
    "default_home",
]
