"""Fixtures that run the catalog and accounting tests against each backend (imported by
tests/unit/conftest.py, and by any test module that needs a PostgreSQL database).

`store_config` and `accounting_url` are parametrized over SQLite (embedded) and PostgreSQL.
The PostgreSQL cases need a server: `make test` starts a throwaway one with
`scripts/test-postgres.sh` and exports its URL as TUNEGATE_TEST_POSTGRES_URL; without that
variable they skip. Each case gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from adapters_store.config import StoreConfig

__all__ = ["BACKENDS", "POSTGRES_ENV", "accounting_url", "postgres_url", "store_config"]

POSTGRES_ENV = "TUNEGATE_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgresql")
_HOW = (
    f"PostgreSQL cases need a server: run `make test`, or `export {POSTGRES_ENV}=$("
    "scripts/test-postgres.sh start /tmp/tunegate-pg)` (a role allowed to CREATE DATABASE)"
)


def _with_dbname(url: str, dbname: str) -> str:
    return urlsplit(url)._replace(path=f"/{dbname}").geturl()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh, empty database on the test server."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(_HOW)
    import psycopg
    from psycopg import sql

    name = f"tunegate_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_dbname(base, name)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            # FORCE: a connection a failed test left open must not keep the database alive.
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(params=BACKENDS)
def store_config(request: pytest.FixtureRequest) -> StoreConfig:
    """The store's settings with its catalog in SQLite, then in a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return StoreConfig()
    return StoreConfig(catalog_url=request.getfixturevalue("postgres_url"))


@pytest.fixture(params=BACKENDS)
def accounting_url(request: pytest.FixtureRequest) -> str | None:
    """`gateway.accounting.url`: None (the SQLite file), then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url
