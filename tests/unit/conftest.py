"""The unit tests' own fixtures: the catalog and accounting backends (tests/postgres.py)."""

from tests.postgres import accounting_url, postgres_url, store_config

__all__ = ["accounting_url", "postgres_url", "store_config"]
