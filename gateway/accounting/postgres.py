"""The record store in PostgreSQL (`gateway.accounting.url`), for several gateways at once.

Same table, columns and queries as the SQLite store (`sqlite.py`): the schema is its
`_SCHEMA` with SQLite's REAL (8 bytes there) spelled DOUBLE PRECISION, since PostgreSQL's
REAL has 4 bytes and would round latencies and costs. Totals and percentiles come from the
same `totals_queries`/`build_totals`, so both stores answer `/v1/usage` alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, fields
from typing import Any

import psycopg

from adapters_store.postgres import new_pool, open_and_prepare, qmark
from gateway.accounting.records import GroupBy, UsageRecord, UsageTotals
from gateway.accounting.sqlite import _ADDED_COLUMNS, _SCHEMA, build_totals, totals_queries

__all__ = ["PostgresSink"]

_COLUMNS = [f.name for f in fields(UsageRecord)]
# Gateways that start together create the table once: the first holds this lock (any fixed
# 64-bit number, "acct") while the others wait and then find it made.
_SCHEMA_LOCK = 0x61636374


class PostgresSink:
    """Records in `requests`; a record whose id is already stored is left as it is."""

    def __init__(self, url: str, setting: str = "gateway.accounting.url") -> None:
        self.url = url
        open_and_prepare(url, setting, "accounting store", self._create, RuntimeError)
        # One writer thread plus `/v1/usage` readers from request threads. Not autocommit:
        # the pool commits a block's statements (a batch of records) as one transaction.
        self._pool = new_pool(url, "tunegate-accounting", max_size=4, autocommit=False)

    @staticmethod
    def _create(conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _SCHEMA.replace(" REAL", " DOUBLE PRECISION").split(";"):
                if statement.strip():
                    conn.execute(statement)  # type: ignore[call-overload]  # fixed DDL
            for column, kind in _ADDED_COLUMNS.items():
                kind = "DOUBLE PRECISION" if kind == "REAL" else kind
                conn.execute(
                    f"ALTER TABLE requests ADD COLUMN IF NOT EXISTS {column} {kind}"  # type: ignore[call-overload]
                )

    def write(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        sql = (
            f"INSERT INTO requests ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join(['%s'] * len(_COLUMNS))}) ON CONFLICT (request_id) DO NOTHING"
        )
        # The pool's connection commits the batch as one transaction when the block exits.
        with self._pool.connection() as conn, conn.cursor() as cur:
            cur.executemany(sql, [astuple(r) for r in records])  # type: ignore[arg-type]

    def totals(
        self,
        group_by: GroupBy,
        since: float | None = None,
        until: float | None = None,
        key_id: str | None = None,
    ) -> list[UsageTotals]:
        sums_sql, latencies_sql, args = totals_queries(group_by, since, until, key_id)
        with self._pool.connection() as conn:
            # One snapshot for both queries, as SQLite's single read gives.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            sums = conn.execute(qmark(sums_sql), args).fetchall()  # type: ignore[call-overload]
            latencies = conn.execute(qmark(latencies_sql), args).fetchall()  # type: ignore[call-overload]
        return build_totals(sums, latencies)

    def close(self) -> None:
        self._pool.close()
