"""The catalog of base models, adapters and tuned models: versioned, validated, checksummed."""

from adapters_store.bases import BaseModel, BaseRegistry, UnknownBaseError
from adapters_store.catalog import (
    NAME_RE,
    AliasEvent,
    ArtifactVersion,
    AuditEntry,
    Canary,
    ChangeRefusedError,
    InvalidReferenceError,
    PublishRefusedError,
    Reference,
    Store,
    StoreError,
    UnknownReferenceError,
    parse_reference,
)
from adapters_store.config import StoreConfig, default_home

__all__ = [
    "NAME_RE",
    "AliasEvent",
    "ArtifactVersion",
    "AuditEntry",
    "BaseModel",
    "BaseRegistry",
    "Canary",
    "ChangeRefusedError",
    "InvalidReferenceError",
    "PublishRefusedError",
    "Reference",
    "Store",
    "StoreConfig",
    "StoreError",
    "UnknownBaseError",
    "UnknownReferenceError",
    "default_home",
    "parse_reference",
]
