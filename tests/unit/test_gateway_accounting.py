"""Accounting: the SQLite record store, the batching writer, prices, and what the app
records per request (through the real app over a fake engine)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient
from psycopg.rows import dict_row

from gateway.accounting import BatchWriter, PriceBook, SQLiteSink, UsageRecord, open_sink
from gateway.accounting.postgres import PostgresSink
from gateway.accounting.sqlite import percentile
from gateway.config import AccountingConfig, Price
from gateway.testing import FakeEngine, fake_app
from tunegate.config import ConfigError, load_settings

BASE = "tiny-random-llama"


def _record(i: int, **overrides: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": f"r{i}",
        "created_at": 1000.0 + i,
        "key_id": None,
        "operation": "chat",
        "requested_model": "m",
        "artifact": "a@1",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "queue_ms": 1.0,
        "ttft_ms": 10.0 * i,
        "e2e_ms": 100.0 * i,
        "status": "ok",
        "http_status": 200,
        "finish_reason": "stop",
        "cost_usd": 0.5,
    }
    values.update(overrides)
    return UsageRecord(**values)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 0.5, None), ([7.0], 0.95, 7.0), ([1, 2, 3, 4], 0.5, 2.5), ([0, 10], 0.95, 9.5)],
)
def test_percentile(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


def test_sink_aggregates_by_group_and_window(tmp_path: Path, accounting_url: str | None) -> None:
    """The same answers from the SQLite file and from PostgreSQL (tests/unit/conftest.py)."""
    sink = open_sink(tmp_path / "acc.sqlite3", accounting_url)
    sink.write([_record(i) for i in range(1, 5)])
    sink.write([_record(5, artifact="b@2", key_id="k1", status="rejected", http_status=404)])
    sink.write([_record(1)])  # a record already stored is not counted twice
    rows = {t.group: t for t in sink.totals("artifact")}
    a = rows["a@1"]
    assert (a.requests, a.errors, a.prompt_tokens, a.completion_tokens) == (4, 0, 40, 20)
    assert (a.latency_ms_p50, a.ttft_ms_p50) == (250.0, 25.0)
    assert a.latency_ms_p95 == pytest.approx(385.0)
    assert a.cost_usd == pytest.approx(2.0)
    b = rows["b@2"]
    assert (b.requests, b.errors, b.latency_ms_p50) == (1, 1, None)  # errors: no latency
    assert {t.group for t in sink.totals("key")} == {None, "k1"}
    assert [t.requests for t in sink.totals("artifact", since=1003.0)] == [2, 1]
    assert [t.requests for t in sink.totals("artifact", since=1002.0, until=1004.0)] == [2]
    assert [t.requests for t in sink.totals("artifact", key_id="k1")] == [1]
    # Groups in one order on both: None first, then by code point.
    sink.write([_record(6, artifact="B@1"), _record(7, artifact=None, status="error")])
    assert [t.group for t in sink.totals("artifact")] == [None, "B@1", "a@1", "b@2"]
    if accounting_url is None:
        mode = sqlite3.connect(tmp_path / "acc.sqlite3").execute("PRAGMA journal_mode").fetchone()
        assert mode == ("wal",)
    else:
        assert not (tmp_path / "acc.sqlite3").exists()
    sink.close()


def test_postgres_sink_survives_its_connections_being_cut(postgres_url: str) -> None:
    sink = open_sink(Path("/nonexistent/acc.sqlite3"), postgres_url)
    sink.write([_record(1)])
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    sink.write([_record(2)])
    assert [t.requests for t in sink.totals("artifact")] == [2]
    sink.close()


def test_postgres_sinks_opened_at_once_create_the_table_once(postgres_url: str) -> None:
    """Gateways starting together on an empty database (the table is made under a lock)."""
    start = threading.Barrier(4)
    results: list[object] = []

    def open_one() -> None:
        start.wait()
        try:
            results.append(open_sink(Path("/nonexistent/acc.sqlite3"), postgres_url))
        except Exception as exc:  # reported below, in the test's thread
            results.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sinks = [r for r in results if not isinstance(r, Exception)]
    assert len(sinks) == 4, results
    for sink in sinks:
        assert isinstance(sink, PostgresSink)
        sink.close()


class _FlakySink(SQLiteSink):
    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.batches: list[int] = []

    def write(self, records: Sequence[UsageRecord]) -> None:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        self.batches.append(len(records))
        super().write(records)


def test_writer_batches_flushes_and_retries(tmp_path: Path) -> None:
    sink = _FlakySink(tmp_path / "acc.sqlite3", failures=1)
    writer = BatchWriter(sink, interval_s=0.05, batch_size=3)
    for i in range(7):
        writer.submit(_record(i))
    assert writer.flush(timeout=10)
    # The first attempt failed; the records were kept and written on the next round.
    while sum(sink.batches) < 7:
        assert writer.flush(timeout=10)
    assert max(sink.batches) <= 3
    writer.submit(_record(7))
    writer.close()  # writes what is still queued
    assert sum(t.requests for t in sink.totals("artifact")) == 8


def test_writer_submit_never_blocks_on_a_slow_sink(tmp_path: Path) -> None:
    gate = threading.Event()

    class _Slow(SQLiteSink):
        def write(self, records: Sequence[UsageRecord]) -> None:
            gate.wait(10)
            super().write(records)

    sink = _Slow(tmp_path / "acc.sqlite3")
    writer = BatchWriter(sink, interval_s=0.01, batch_size=1)
    for i in range(50):
        writer.submit(_record(i))  # returns although the sink is stuck
    gate.set()
    writer.close()
    assert sink.totals("artifact")[0].requests == 50


def test_default_price_formula_and_overrides() -> None:
    config = AccountingConfig(usd_per_gpu_hour=3.6, throughput_tok_s=100.0, input_weight=0.25)
    # 3.6 $/h / (3600 s/h * 100 tok/s) = 1e-5 $ per output token = 10 $ per 1M.
    assert config.default_price == Price(input=2.5, output=10.0)
    book = PriceBook(
        AccountingConfig(
            prices={
                "telecom@2": {"input": 1.0, "output": 2.0},
                "telecom": {"input": 3.0, "output": 4.0},
                BASE: {"input": 5.0, "output": 6.0},
            }
        )
    )
    assert book.price("telecom@2", BASE) == Price(1.0, 2.0)
    assert book.price("telecom@1", BASE) == Price(3.0, 4.0)
    assert book.price("retail@1", BASE) == Price(5.0, 6.0)
    assert book.price("retail@1", "other") == book.default
    assert book.cost("telecom@2", BASE, 1_000_000, 500_000) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "prices",
    [{"x": 1.0}, {"x": {"input": "a"}}, {"x": {"input": -1}}, {"x": {"inputs": 1}}],
)
def test_bad_price_tables_are_refused(prices: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="prices"):
        AccountingConfig(prices=prices)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("TUNEGATE_GATEWAY_ACCOUNTING_FLUSH_INTERVAL_S", "5"),
        ("TUNEGATE_GATEWAY_ENGINE_MAX_CPU_LORAS", "1"),
        ("TUNEGATE_GATEWAY_ENGINE_DTYPE", "int3"),
        ("TUNEGATE_GATEWAY_PORT", "0"),
        ("TUNEGATE_GATEWAY_STORE_POLL_S", "2"),
        ("TUNEGATE_GATEWAY_ACCOUNTING_THROUGHPUT_TOK_S", "nan"),
    ],
)
def test_gateway_settings_are_validated(
    home: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError):
        load_settings()


def test_gateway_settings_layer_from_file_and_env(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / "config.yaml").write_text(
        "gateway:\n"
        "  port: 9000\n"
        "  engine: {max_loras: 2, extra_args: {enforce_eager: true}}\n"
        "  accounting: {prices: {base: {input: 1, output: 2}}}\n"
    )
    monkeypatch.setenv("TUNEGATE_GATEWAY_ENGINE_BASES", "tiny-random-llama")
    settings = load_settings()
    gw = settings.gateway
    assert (gw.port, gw.engine.max_loras, gw.engine.bases) == (9000, 2, ["tiny-random-llama"])
    assert gw.engine.extra_args == {"enforce_eager": True}
    assert gw.accounting.price_overrides() == {"base": Price(1.0, 2.0)}


# ----------------------------------------------------------------------------- via the app


@pytest.fixture
def gateway(
    home: Path, accounting_url: str | None
) -> Iterator[tuple[TestClient[Any], FakeEngine, Path | str]]:
    settings = load_settings()
    settings.default_base = BASE
    settings.gateway.engine.max_model_len = 64
    settings.gateway.accounting.prices = {BASE: {"input": 1.0, "output": 10.0}}
    settings.gateway.accounting.url = accounting_url
    app, engines = fake_app(settings)
    with TestClient(app) as client:
        yield client, engines[BASE], accounting_url or home / "accounting.sqlite3"


def _rows(db: Path | str) -> dict[str, dict[str, Any]]:
    """Every stored record by id, from the SQLite file or the PostgreSQL URL."""
    if isinstance(db, str):
        with psycopg.connect(db, row_factory=dict_row) as pg:
            return {r["request_id"]: r for r in pg.execute("SELECT * FROM requests")}
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return {r["request_id"]: dict(r) for r in conn.execute("SELECT * FROM requests")}
    finally:
        conn.close()


def test_one_record_per_request_with_the_response_usage(
    gateway: tuple[TestClient[Any], FakeEngine, Path | str],
) -> None:
    client, _, db = gateway
    user = [{"role": "user", "content": "count the tokens"}]
    ok = client.post(
        "/v1/chat/completions", json={"model": BASE, "messages": user, "max_tokens": 4}
    )
    streamed = client.post(
        "/v1/chat/completions",
        json={"model": BASE, "messages": user, "max_tokens": 3, "stream": True},
    )
    text = client.post("/v1/completions", json={"model": BASE, "prompt": "a b", "max_tokens": 2})
    missing = client.post("/v1/chat/completions", json={"model": "nope", "messages": user})
    too_long = client.post(
        "/v1/chat/completions", json={"model": BASE, "messages": user, "max_tokens": 100}
    )
    # The usage report flushes the writer first, so everything answered is in the file.
    report = client.get("/v1/usage", params={"group_by": "model"}).json()
    rows = _rows(db)
    ids = [r.headers["x-request-id"] for r in (ok, streamed, text, missing, too_long)]
    assert sorted(rows) == sorted(ids)

    usage = ok.json()["usage"]
    row = rows[ids[0]]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert (row["status"], row["http_status"], row["artifact"]) == ("ok", 200, BASE)
    assert row["cost_usd"] == pytest.approx(
        (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 10.0) / 1e6
    )
    assert row["ttft_ms"] is not None and row["e2e_ms"] >= row["ttft_ms"]
    assert row["queue_ms"] == 0.0 and row["finish_reason"] == "length"
    assert (rows[ids[1]]["completion_tokens"], rows[ids[1]]["status"]) == (3, "ok")
    assert (rows[ids[2]]["operation"], rows[ids[2]]["completion_tokens"]) == ("text_completion", 2)
    assert (rows[ids[3]]["status"], rows[ids[3]]["http_status"], rows[ids[3]]["artifact"]) == (
        "rejected",
        404,
        None,
    )
    assert (rows[ids[4]]["status"], rows[ids[4]]["cost_usd"]) == ("rejected", 0.0)

    groups = {g["group"]: g for g in report["data"]}
    assert groups[BASE]["requests"] == 4 and groups[BASE]["errors"] == 1
    assert groups[BASE]["completion_tokens"] == 4 + 3 + 2
    assert groups["nope"]["requests"] == 1


@pytest.mark.parametrize(
    ("params", "param"),
    [({"group_by": "colour"}, "group_by"), ({"since": "yesterday"}, "since")],
)
def test_usage_query_errors(
    gateway: tuple[TestClient[Any], FakeEngine, Path | str], params: dict[str, str], param: str
) -> None:
    client, _, _ = gateway
    response = client.get("/v1/usage", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_usage_since_accepts_iso_and_unix(
    gateway: tuple[TestClient[Any], FakeEngine, Path | str],
) -> None:
    client, _, _ = gateway
    user = [{"role": "user", "content": "x"}]
    client.post("/v1/chat/completions", json={"model": BASE, "messages": user, "max_tokens": 1})
    assert client.get("/v1/usage", params={"since": "2000-01-01T00:00:00Z"}).json()["data"]
    assert client.get("/v1/usage", params={"since": "4102444800"}).json()["data"] == []


def test_records_are_flushed_on_shutdown(home: Path, accounting_url: str | None) -> None:
    settings = load_settings()
    settings.default_base = BASE
    settings.gateway.accounting.flush_interval_s = 1.0
    settings.gateway.accounting.url = accounting_url
    app, _ = fake_app(settings)
    with TestClient(app) as client:
        user = [{"role": "user", "content": "x"}]
        ids = [
            client.post(
                "/v1/chat/completions", json={"model": BASE, "messages": user, "max_tokens": 1}
            ).headers["x-request-id"]
            for _ in range(5)
        ]
    assert sorted(_rows(accounting_url or home / "accounting.sqlite3")) == sorted(ids)


def test_per_artifact_series_at_metrics(
    gateway: tuple[TestClient[Any], FakeEngine, Path | str],
) -> None:
    client, _, _ = gateway
    user = [{"role": "user", "content": "x"}]
    client.post("/v1/chat/completions", json={"model": BASE, "messages": user, "max_tokens": 2})
    text = client.get("/metrics").text
    lines = [line for line in text.splitlines() if f'tunegate_artifact="{BASE}"' in line]
    names = {line.split("{", 1)[0] for line in lines}
    assert {
        "gen_ai_client_token_usage_bucket",
        "gen_ai_server_request_duration_seconds_count",
        "gen_ai_server_time_to_first_token_seconds_count",
        "gen_ai_server_time_per_output_token_seconds_count",
    } <= names
    output = [
        line
        for line in lines
        if line.startswith("gen_ai_client_token_usage_sum") and 'gen_ai_token_type="output"' in line
    ]
    assert len(output) == 1 and output[0].endswith(" 2.0")
