"""What the PostgreSQL catalog and the PostgreSQL accounting store share: the first,
explained connection, the connection pool, and the `?` placeholder translation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from adapters_store.config import redact_url

__all__ = ["new_pool", "open_and_prepare", "qmark"]

CONNECT_TIMEOUT_S = 10


def qmark(sql: str) -> str:
    """A statement written with `?` placeholders (the SQL both backends share) in psycopg's
    style. Exact only for statements that hold no `?` but placeholders and no `%` (which
    psycopg would read as a placeholder): one with a `%` is refused."""
    if "%" in sql:
        raise ValueError(f"shared SQL must not contain '%': {sql!r}")
    return sql.replace("?", "%s")


def open_and_prepare(
    url: str,
    setting: str,
    what: str,
    prepare: Callable[[psycopg.Connection[Any]], None],
    error: Callable[[str], Exception],
) -> None:
    """One direct connection that runs `prepare` (creating or migrating the schema): a wrong
    URL or a server that is down fails here with libpq's reason and the setting's name, not
    as a pool timeout later."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            prepare(conn)
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        raise error(
            f"{setting}: cannot open the PostgreSQL {what} at {redact_url(url)}: {reason}"
        ) from None


def new_pool(
    url: str, name: str, max_size: int, autocommit: bool
) -> ConnectionPool[psycopg.Connection[Any]]:
    return ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        kwargs={"autocommit": autocommit, "connect_timeout": CONNECT_TIMEOUT_S},
        # One empty round trip per checkout: after a database restart or failover a dead
        # pooled connection is replaced instead of failing the caller once.
        check=ConnectionPool.check_connection,
        open=True,
        name=name,
    )
