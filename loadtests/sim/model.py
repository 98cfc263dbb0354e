"""Discrete-event simulation of routing an adapter workload over N vLLM replicas.

No GPU and no network: a replica is its adapter slots (`gateway.replicas.AdapterSlots`, the
same bookkeeping the gateway's router keeps) and a count of requests in flight. Requests
arrive as a Poisson process, pick an adapter from a Zipf popularity, and hold their replica
for an exponential service time; the arrival rate is set so that the whole fleet holds
`concurrency` requests per replica on average (Little's law: rate = N * concurrency / mean
service time). Each routing policy sees the same request sequence (same seed).

This module imports the router's policy (pure bookkeeping, no I/O) rather than talking to a
gateway over HTTP: the point is to measure the policy itself at fleet sizes no test machine
can run.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from gateway.replicas import AdapterSlots, ReplicaRouter, Route, SlotChange

__all__ = ["POLICIES", "SimConfig", "SimResult", "simulate", "zipf_weights"]


@dataclass(frozen=True)
class SimConfig:
    """One simulated fleet and workload."""

    replicas: int = 16
    adapters: int = 1000
    requests: int = 50_000
    zipf_s: float = field(default=1.0, metadata={"doc": "Zipf exponent of adapter popularity."})
    max_loras: int = 4
    max_cpu_loras: int = 16
    concurrency: float = field(
        default=4.0, metadata={"doc": "Mean requests in flight per replica."}
    )
    warmup: float = field(
        default=0.2, metadata={"doc": "Share of requests run before measuring (caches fill)."}
    )
    load_factor: float = 1.25
    home_count: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("replicas", "adapters", "requests", "max_loras", "max_cpu_loras"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_cpu_loras < self.max_loras:
            raise ValueError("max_cpu_loras must be >= max_loras")
        if not self.zipf_s >= 0:
            raise ValueError(f"zipf_s must be >= 0, got {self.zipf_s}")
        if not self.concurrency > 0:
            raise ValueError(f"concurrency must be > 0, got {self.concurrency}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")


@dataclass(frozen=True)
class SimResult:
    """What one policy did with one workload (measured after the warm-up)."""

    policy: str
    replicas: int
    requests: int
    loads_per_1k: float
    """Adapter loads into a replica (not held there yet) per 1,000 requests."""
    unloads_per_1k: float
    slot_hit_ratio: float
    """Share of requests whose adapter was already in one of its replica's GPU slots."""
    held_hit_ratio: float
    """Share of requests whose adapter the replica already held (no load needed)."""
    imbalance: float
    """Max / mean of requests served per replica."""
    inflight_imbalance: float
    """Max / mean of requests in flight per replica, averaged over arrivals."""
    replicas_per_adapter: float
    """Distinct replicas that served an adapter, averaged over the adapters requested."""
    spilled_ratio: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


class _Placer(Protocol):
    def place(self, adapter: str) -> tuple[str, SlotChange, bool]: ...

    def finish(self, replica: str, adapter: str) -> None: ...

    def in_flight(self) -> list[int]: ...


class _AffinityPlacer:
    """The gateway's router: consistent hashing with bounded loads."""

    def __init__(self, names: list[str], config: SimConfig, rng: random.Random) -> None:
        del rng  # deterministic policy
        self.router = ReplicaRouter(
            names,
            max_loras=config.max_loras,
            max_cpu_loras=config.max_cpu_loras,
            load_factor=config.load_factor,
            home_count=config.home_count,
        )
        self._routes: dict[tuple[str, str], list[Route]] = {}

    def place(self, adapter: str) -> tuple[str, SlotChange, bool]:
        route = self.router.route(adapter)
        self._routes.setdefault((route.replica, adapter), []).append(route)
        assert route.slots is not None
        return route.replica, route.slots, route.spilled

    def finish(self, replica: str, adapter: str) -> None:
        self.router.finish(self._routes[(replica, adapter)].pop())

    def in_flight(self) -> list[int]:
        return [s.in_flight for s in self.router.replicas.values()]


class _BlindPlacer:
    """A policy that ignores the adapter: it only chooses among replicas."""

    def __init__(
        self, names: list[str], config: SimConfig, choose: Callable[[list[str]], str]
    ) -> None:
        self.slots = {n: AdapterSlots(config.max_loras, config.max_cpu_loras) for n in names}
        self.loads = dict.fromkeys(names, 0)
        self.names = names
        self.choose = choose

    def place(self, adapter: str) -> tuple[str, SlotChange, bool]:
        name = self.choose(self.names)
        self.loads[name] += 1
        return name, self.slots[name].use(adapter), False

    def finish(self, replica: str, adapter: str) -> None:
        self.loads[replica] -= 1
        self.slots[replica].done(adapter)

    def in_flight(self) -> list[int]:
        return list(self.loads.values())


def _round_robin(names: list[str], config: SimConfig, rng: random.Random) -> _Placer:
    turn = iter(range(1 << 62))
    return _BlindPlacer(names, config, lambda ns: ns[next(turn) % len(ns)])


def _random(names: list[str], config: SimConfig, rng: random.Random) -> _Placer:
    return _BlindPlacer(names, config, rng.choice)


POLICIES: dict[str, Callable[[list[str], SimConfig, random.Random], _Placer]] = {
    "affinity": _AffinityPlacer,
    "round-robin": _round_robin,
    "random": _random,
}


def zipf_weights(n: int, s: float) -> np.ndarray:
    """Popularity of the adapters ranked 1..n: proportional to 1 / rank**s, summing to 1."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return weights / weights.sum()


def _workload(config: SimConfig) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The request sequence every policy sees: adapters, arrival times, service times."""
    rng = np.random.default_rng(config.seed)
    # Popularity rank is shuffled against the name, so no policy can gain from name order.
    names = [f"adapter-{i:04d}" for i in rng.permutation(config.adapters)]
    picks = rng.choice(
        config.adapters, size=config.requests, p=zipf_weights(config.adapters, config.zipf_s)
    )
    rate = config.replicas * config.concurrency  # mean service time is 1
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=config.requests))
    service = rng.exponential(1.0, size=config.requests)
    return [names[i] for i in picks], arrivals, service


def simulate(config: SimConfig, policy: str) -> SimResult:
    """Run one policy over the configured workload and measure it."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; one of {sorted(POLICIES)}")
    adapters, arrivals, service = _workload(config)
    names = [f"replica-{i:02d}" for i in range(config.replicas)]
    placer = POLICIES[policy](names, config, random.Random(config.seed))
    start = int(config.requests * config.warmup)
    departures: list[tuple[float, int, str, str]] = []
    served = dict.fromkeys(names, 0)
    where: dict[str, set[str]] = {}
    loads = unloads = slot_hits = spilled = 0
    inflight_ratio_sum = 0.0
    for i, adapter in enumerate(adapters):
        now = float(arrivals[i])
        while departures and departures[0][0] <= now:
            _, _, replica, done_adapter = heapq.heappop(departures)
            placer.finish(replica, done_adapter)
        replica, change, was_spilled = placer.place(adapter)
        heapq.heappush(departures, (now + float(service[i]), i, replica, adapter))
        if i < start:
            continue
        served[replica] += 1
        where.setdefault(adapter, set()).add(replica)
        loads += change.load
        unloads += len(change.unload)
        slot_hits += change.slot_hit
        spilled += was_spilled
        in_flight = placer.in_flight()
        inflight_ratio_sum += max(in_flight) / (sum(in_flight) / len(in_flight))
    measured = config.requests - start
    mean_served = measured / config.replicas
    return SimResult(
        policy=policy,
        replicas=config.replicas,
        requests=measured,
        loads_per_1k=1000 * loads / measured,
        unloads_per_1k=1000 * unloads / measured,
        slot_hit_ratio=slot_hits / measured,
        held_hit_ratio=1 - loads / measured,
        imbalance=max(served.values()) / mean_served,
        inflight_imbalance=inflight_ratio_sum / measured,
        replicas_per_adapter=sum(len(s) for s in where.values()) / len(where),
        spilled_ratio=spilled / measured,
    )
