"""Errors the store reports to its callers (re-exported by `adapters_store.catalog`)."""

from __future__ import annotations

__all__ = [
    "CatalogUnavailableError",
    "ChangeRefusedError",
    "InvalidReferenceError",
    "PublishRefusedError",
    "StoreError",
    "UnknownReferenceError",
]


class StoreError(Exception):
    """Base of every error the store reports to a caller."""


class InvalidReferenceError(StoreError, ValueError):
    """A name, alias or reference that does not match the allowed syntax."""


class UnknownReferenceError(StoreError, LookupError):
    """A well-formed reference that names nothing in the catalog."""


class PublishRefusedError(StoreError, ValueError):
    """Validation refused an artifact; the message names the offending file and field."""


class ChangeRefusedError(StoreError, ValueError):
    """A removal or card change the catalog refuses, e.g. removing an alias's target."""


class CatalogUnavailableError(StoreError, RuntimeError):
    """The configured catalog cannot be opened: its server refuses or does not answer, or
    its schema is newer than this tunegate; the message names the setting."""
