"""OpenTelemetry metrics and traces with the `gen_ai.*` semantic conventions.

Every series also carries `tunegate.artifact` (the resolved `name@version` or base id), so
each latency and token figure can be broken down per adapter. Metrics are read by a
Prometheus reader (served at `/metrics`) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
metrics/traces specific variable) is set, exported over OTLP/HTTP together with the spans.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as gm
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

if TYPE_CHECKING:
    from gateway.monitoring.watch import DriftSnapshot

__all__ = ["ARTIFACT", "FEEDBACK_KIND", "RequestMetrics", "Telemetry", "otlp_enabled"]

ARTIFACT = "tunegate.artifact"
FEEDBACK_KIND = "tunegate.feedback.kind"
_DRIFT_GAUGES = [
    (
        "tunegate.drift.label_divergence",
        "label_divergence",
        "Jensen-Shannon divergence (base 2) of the answer labels over the monitor window "
        "from the training labels.",
    ),
    (
        "tunegate.drift.prompt_length_divergence",
        "length_divergence",
        "Jensen-Shannon divergence of the prompt-length histogram from the training prompts'.",
    ),
    (
        "tunegate.drift.oov_shift",
        "oov_shift",
        "Mean share of prompt tokens unseen in training, minus the held-out data's share.",
    ),
    ("tunegate.drift.flagged", "flagged", "1 when the window's drift is over its threshold."),
]

# Bucket boundaries the GenAI semantic conventions recommend for these histograms.
_TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304]
_SECONDS_BUCKETS = [0.01 * 2**i for i in range(14)]  # 0.01 s .. 81.92 s
_TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]


def otlp_enabled(kind: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether OTLP export of `kind` ("metrics" or "traces") is configured by the env."""
    env = os.environ if env is None else env
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get(f"OTEL_EXPORTER_OTLP_{kind.upper()}_ENDPOINT")
    )


@dataclass(frozen=True)
class RequestMetrics:
    """What one finished request reports."""

    operation: str  # gen_ai.operation.name: "chat" or "text_completion"
    requested_model: str
    response_model: str | None  # the resolved artifact; None when routing failed
    prompt_tokens: int
    completion_tokens: int
    duration_s: float
    ttft_s: float | None
    error_type: str | None  # None on success


class Telemetry:
    """The gateway's meter and tracer, and the Prometheus exposition of its metrics."""

    def __init__(self, service_name: str = "tunegate-gateway") -> None:
        resource = Resource.create({"service.name": service_name})
        # A registry of our own, so that several apps (tests) in one process do not
        # register the same collector twice; /metrics adds the process-wide registry,
        # where vLLM publishes its engine metrics.
        self.registry = CollectorRegistry(auto_describe=True)
        readers: list[MetricReader] = [PrometheusMetricReader(registry=self.registry)]
        if otlp_enabled("metrics"):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        self.meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        self.tracer_provider: TracerProvider | None = None
        if otlp_enabled("traces"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.tracer_provider = TracerProvider(resource=resource)
            self.tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            self.tracer: trace.Tracer = self.tracer_provider.get_tracer("tunegate.gateway")
        else:
            # Without an exporter nobody reads spans: skip the cost of recording them.
            self.tracer = trace.NoOpTracer()

        meter = self.meter_provider.get_meter("tunegate.gateway")
        self.token_usage = meter.create_histogram(
            gm.GEN_AI_CLIENT_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.request_duration = meter.create_histogram(
            gm.GEN_AI_SERVER_REQUEST_DURATION,
            unit="s",
            description="Generative AI server request duration such as time-to-last byte.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self.time_to_first_token = meter.create_histogram(
            gm.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
            unit="s",
            description="Time to generate first token for successful responses.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self.time_per_output_token = meter.create_histogram(
            gm.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
            unit="s",
            description="Time per output token generated after the first token.",
            explicit_bucket_boundaries_advisory=_TPOT_BUCKETS,
        )
        self.in_flight = meter.create_up_down_counter(
            "tunegate.requests.in_flight",
            unit="{request}",
            description="Generation requests admitted and not finished.",
        )
        self._meter = meter
        self.feedback = meter.create_counter(
            "tunegate.feedback",
            unit="{feedback}",
            description="Feedback received per answering artifact, by kind (rating, correction).",
        )
        # Ratings are in [-1, 1] and OTel histograms take no negative values: a sum that
        # moves both ways, over the rating count above, gives the mean score.
        self.feedback_rating_sum = meter.create_up_down_counter(
            "tunegate.feedback.rating_sum",
            unit="1",
            description="Sum of ratings in [-1, 1] per answering artifact (/ ratings = mean).",
        )

    # ------------------------------------------------------------------ metrics

    def record(self, m: RequestMetrics) -> None:
        attrs: dict[str, Any] = {
            ga.GEN_AI_OPERATION_NAME: m.operation,
            ga.GEN_AI_REQUEST_MODEL: m.requested_model,
        }
        if m.response_model is not None:
            attrs[ga.GEN_AI_RESPONSE_MODEL] = m.response_model
            attrs[ARTIFACT] = m.response_model
        if m.error_type is not None:
            attrs[ERROR_TYPE] = m.error_type
        self.request_duration.record(m.duration_s, attrs)
        if m.error_type is not None:
            return
        self.token_usage.record(m.prompt_tokens, {**attrs, ga.GEN_AI_TOKEN_TYPE: "input"})
        self.token_usage.record(m.completion_tokens, {**attrs, ga.GEN_AI_TOKEN_TYPE: "output"})
        if m.ttft_s is not None:
            self.time_to_first_token.record(m.ttft_s, attrs)
            if m.completion_tokens > 1:
                tpot = (m.duration_s - m.ttft_s) / (m.completion_tokens - 1)
                self.time_per_output_token.record(tpot, attrs)

    def record_feedback(
        self, artifact: str | None, rating: float | None, correction: str | None
    ) -> None:
        attrs: dict[str, Any] = {ARTIFACT: artifact} if artifact is not None else {}
        if rating is not None:
            self.feedback.add(1, {**attrs, FEEDBACK_KIND: "rating"})
            self.feedback_rating_sum.add(rating, attrs)
        if correction:
            self.feedback.add(1, {**attrs, FEEDBACK_KIND: "correction"})

    def observe_drift(self, snapshot: Callable[[], Mapping[str, DriftSnapshot]]) -> None:
        """Drift gauges per artifact version, read from `snapshot()` at each collection
        (the last figures a `DriftWatch` computed; see gateway.monitoring.watch)."""

        def gauge(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                for artifact, figures in snapshot().items():
                    value = getattr(figures, field)
                    if value is not None:
                        yield Observation(float(value), {ARTIFACT: artifact})

            return observe

        for name, field, description in _DRIFT_GAUGES:
            self._meter.create_observable_gauge(
                name, callbacks=[gauge(field)], unit="1", description=description
            )

    def exposition(self) -> bytes:
        """Prometheus text format: the gateway's series, then the process-wide ones."""
        return generate_latest(self.registry) + generate_latest(REGISTRY)

    # ------------------------------------------------------------------ traces

    def start_span(
        self, operation: str, requested_model: str, headers: Mapping[str, str]
    ) -> trace.Span:
        """A server span for one request, child of the caller's `traceparent` if any."""
        if self.tracer_provider is None:
            return trace.INVALID_SPAN  # nothing exports spans: skip building one
        return self.tracer.start_span(
            f"{operation} {requested_model}",
            kind=SpanKind.SERVER,
            context=propagate.extract(headers),
            attributes={
                ga.GEN_AI_OPERATION_NAME: operation,
                ga.GEN_AI_REQUEST_MODEL: requested_model,
            },
        )

    def shutdown(self) -> None:
        self.meter_provider.shutdown()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
