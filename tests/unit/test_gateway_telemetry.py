"""Telemetry leaves the gateway over OTLP/HTTP when the standard variable names a collector,
and bounded admission refuses (503 + Retry-After) instead of queueing without limit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.errors import OverloadedError
from gateway.serving import Admission
from gateway.telemetry import otlp_enabled
from gateway.testing import fake_app
from tunegate.config import load_settings

BASE = "tiny-random-llama"


@pytest.fixture
def collector() -> Iterator[tuple[str, dict[str, list[bytes]]]]:
    """A minimal OTLP/HTTP receiver: records the protobuf bodies posted per path."""
    received: dict[str, list[bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.setdefault(self.path, []).append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()


def _attrs(kvs: Any) -> dict[str, Any]:
    out = {}
    for kv in kvs:
        value = kv.value
        out[kv.key] = (
            getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
        )
    return out


def test_otlp_export_of_spans_and_metrics(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    collector: tuple[str, dict[str, list[bytes]]],
) -> None:
    url, received = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    assert otlp_enabled("traces") and otlp_enabled("metrics")
    settings = load_settings()
    settings.default_base = BASE
    app, _ = fake_app(settings)
    with TestClient(app) as client:
        reply = client.post(
            "/v1/chat/completions",
            json={"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
            headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        )
        assert reply.status_code == 200
    # Leaving the client shut the app down, which flushes both exporters.
    traces = ExportTraceServiceRequest()
    for body in received["/v1/traces"]:
        traces.MergeFromString(body)
    spans = [s for rs in traces.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(spans) == 1
    span = spans[0]
    assert span.name == f"chat {BASE}"
    # The caller's trace continues through the gateway.
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    attrs = _attrs(span.attributes)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == BASE
    assert attrs["tunegate.artifact"] == BASE
    assert attrs["gen_ai.usage.output_tokens"] == 3
    assert attrs["gen_ai.response.id"] == reply.headers["x-request-id"]

    metrics = ExportMetricsServiceRequest()
    for body in received["/v1/metrics"]:
        metrics.MergeFromString(body)
    names = {
        m.name for rm in metrics.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    assert {
        "gen_ai.client.token.usage",
        "gen_ai.server.request.duration",
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.time_per_output_token",
    } <= names


def test_no_export_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ):
        monkeypatch.delenv(var, raising=False)
    assert not otlp_enabled("traces") and not otlp_enabled("metrics")
    assert otlp_enabled("traces", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x"})


def test_admission_is_bounded_and_drains() -> None:
    async def scenario() -> None:
        admission = Admission(limit=2)
        admission.enter()
        admission.enter()
        with pytest.raises(OverloadedError) as info:
            admission.enter()
        assert info.value.status_code == 503 and info.value.headers["Retry-After"]
        assert await admission.drain(timeout_s=0.01) is False  # two still in flight
        with pytest.raises(OverloadedError, match="shutting down"):
            admission.enter()
        asyncio.get_running_loop().call_later(0.01, admission.leave)
        asyncio.get_running_loop().call_later(0.02, admission.leave)
        assert await admission.drain(timeout_s=5) is True
        assert admission.in_flight == 0

    asyncio.run(scenario())


def test_overload_answers_503_with_retry_after(home: Path) -> None:
    settings = load_settings()
    settings.default_base = BASE
    settings.gateway.max_pending = 1
    app, _ = fake_app(settings)
    with TestClient(app) as client:
        admission = client.app.state.services.admission
        admission.enter()  # one request already in flight
        try:
            reply = client.post(
                "/v1/chat/completions",
                json={"model": BASE, "messages": [{"role": "user", "content": "x"}]},
            )
        finally:
            admission.leave()
        assert reply.status_code == 503
        assert reply.headers["retry-after"] == "1"
        assert reply.json()["error"]["code"] == "overloaded"
