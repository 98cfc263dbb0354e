"""Per-replica and per-adapter series of a `ReplicaFleet`, as OpenTelemetry observables.

Read from the fleet's counters at each collection (Prometheus scrape or OTLP export), so
routing pays nothing per request for them. Replica series carry `tunegate.replica` (its URL);
adapter series carry `tunegate.artifact` like the gateway's other per-adapter series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from gateway.engine import Engine
from gateway.replicas.fleet import ReplicaFleet
from gateway.replicas.remote_engine import RemoteEngine
from gateway.telemetry import ARTIFACT, Telemetry

__all__ = ["REPLICA", "observe_fleet", "observe_remote_engines"]

REPLICA = "tunegate.replica"

# (series, snapshot field, unit, description); counters only grow, gauges move both ways.
_REPLICA_COUNTERS = [
    ("tunegate.replica.requests", "requests", "{request}", "Requests routed to the replica."),
    ("tunegate.replica.spilled", "spilled", "{request}", "Requests it took past their homes."),
    ("tunegate.replica.adapter_loads", "loads", "{load}", "Adapters loaded into it."),
    ("tunegate.replica.adapter_unloads", "unloads", "{unload}", "Cold adapters unloaded."),
    ("tunegate.replica.load_failures", "load_failures", "{load}", "Adapter loads it refused."),
    ("tunegate.replica.marked_down", "marked_down", "{event}", "Times it was taken out."),
]
_REPLICA_GAUGES = [
    ("tunegate.replica.healthy", "healthy", "1", "1 while the replica receives requests."),
    ("tunegate.replica.in_flight", "in_flight", "{request}", "Requests it holds now."),
]
_ADAPTER_COUNTERS = [
    ("tunegate.adapter.replica_requests", "requests", "{request}", "Requests to replicas."),
    ("tunegate.adapter.replica_loads", "loads", "{load}", "Loads into a replica."),
    ("tunegate.adapter.spilled", "spilled", "{request}", "Requests served off its homes."),
]
# Both labels: which replica served which adapter (affinity). One series per pair that ever
# had a request, which affinity keeps near home_count per adapter.
_PAIR_COUNTERS = [
    ("tunegate.replica.adapter_requests", "requests", "{request}", "Requests of the adapter."),
    ("tunegate.replica.adapter_spilled", "spilled", "{request}", "Of them, spilled there."),
]


def observe_fleet(telemetry: Telemetry, fleet: ReplicaFleet) -> None:
    """Register the fleet's series with the gateway's meter provider."""
    meter: Meter = telemetry.meter_provider.get_meter("tunegate.gateway.replicas")

    def replica_values(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            for url, figures in fleet.snapshot()["replicas"].items():
                yield Observation(float(figures[field]), {REPLICA: url})

        return observe

    def adapter_values(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            for name, figures in fleet.snapshot()["adapters"].items():
                yield Observation(float(figures[field]), {ARTIFACT: name})

        return observe

    def pair_values(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            for pair in fleet.snapshot()["pairs"]:
                yield Observation(
                    float(pair[field]), {REPLICA: pair["replica"], ARTIFACT: pair["adapter"]}
                )

        return observe

    for name, field, unit, description in _REPLICA_COUNTERS:
        meter.create_observable_counter(
            name, callbacks=[replica_values(field)], unit=unit, description=description
        )
    for name, field, unit, description in _REPLICA_GAUGES:
        meter.create_observable_gauge(
            name, callbacks=[replica_values(field)], unit=unit, description=description
        )
    for name, field, unit, description in _ADAPTER_COUNTERS:
        meter.create_observable_counter(
            name, callbacks=[adapter_values(field)], unit=unit, description=description
        )
    for name, field, unit, description in _PAIR_COUNTERS:
        meter.create_observable_counter(
            name, callbacks=[pair_values(field)], unit=unit, description=description
        )


def observe_remote_engines(telemetry: Telemetry, engines: Mapping[str, Engine]) -> None:
    """Register the series of every engine that is a replica fleet (none for local ones)."""
    for engine in engines.values():
        if isinstance(engine, RemoteEngine):
            observe_fleet(telemetry, engine.fleet)
