"""Adapter-affinity routing over N vLLM replicas: consistent hashing with bounded loads.

Every replica can serve every adapter, but an adapter a replica does not hold costs a load
from disk, and each replica only holds `max_cpu_loras` of them. So each adapter should live on
few replicas, while no replica may become the hot spot of a popular adapter. Both are what
consistent hashing with bounded loads gives (V. Mirrokni, M. Thorup, M. Zadimoghaddam,
"Consistent Hashing with Bounded Loads", SODA 2018, arXiv:1608.01350):

- replicas sit on a hash ring (uhashring: md5 points, 160 virtual nodes each), so the walk
  clockwise from an adapter's hash gives it a fixed preference order of replicas, and adding
  or removing a replica moves only the adapters whose walk meets that replica first;
- the first `home_count` replicas of that walk are the adapter's homes;
- no replica takes a request while it holds `ceil(load_factor * (in_flight + 1) / healthy)`
  or more in flight (the paper's capacity with `load_factor` = 1 + eps): a request whose homes
  are all at capacity or unhealthy spills to the next replica of the walk. The capacity is
  above the mean, so some healthy replica is always below it and every request is placed.

Requests for the base model need no adapter: they go to the least loaded healthy replica.
Unhealthy replicas stay on the ring so adapters come back to the same homes when they recover.
The router does no I/O: the remote backend asks it where to send a request, performs the
loads and unloads it reports, and tells it when the request finished.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from uhashring import HashRing

from gateway.replicas.slots import AdapterSlots, SlotChange

__all__ = ["NoHealthyReplicaError", "ReplicaRouter", "ReplicaState", "Route"]


class NoHealthyReplicaError(RuntimeError):
    """Every replica is down (or none is configured): the request cannot be placed."""


@dataclass
class ReplicaState:
    """What the router knows of one replica."""

    name: str
    slots: AdapterSlots
    healthy: bool = True
    in_flight: int = 0
    served: int = 0


@dataclass(frozen=True)
class Route:
    """Where one request goes, and what the replica must do before it serves it."""

    replica: str
    adapter: str | None
    """None for a request to the base model."""
    spilled: bool
    """The request went to a replica outside the adapter's homes (homes full or down)."""
    slots: SlotChange | None
    """Loads and unloads the replica needs first; None for a base-model request."""


class ReplicaRouter:
    """Consistent hashing with bounded loads over named replicas, with per-replica slots."""

    def __init__(
        self,
        replicas: Iterable[str],
        *,
        max_loras: int,
        max_cpu_loras: int,
        load_factor: float = 1.25,
        home_count: int = 1,
    ) -> None:
        if load_factor <= 1.0:
            raise ValueError(f"load_factor must be > 1 (it is 1 + eps), got {load_factor}")
        if home_count < 1:
            raise ValueError(f"home_count must be >= 1, got {home_count}")
        self.max_loras = max_loras
        self.max_cpu_loras = max_cpu_loras
        self.load_factor = load_factor
        self.home_count = home_count
        self._replicas: dict[str, ReplicaState] = {}
        self._ring = HashRing(nodes=[])
        # The ring walk of an adapter only changes with ring membership: cache it.
        self._walks: dict[str, tuple[str, ...]] = {}
        for name in replicas:
            self.add_replica(name)

    # -- membership and health -----------------------------------------------------------

    @property
    def replicas(self) -> dict[str, ReplicaState]:
        return dict(self._replicas)

    def add_replica(self, name: str) -> None:
        if not name:
            raise ValueError("a replica needs a non-empty name")
        if name in self._replicas:
            raise ValueError(f"replica {name!r} is already routed to")
        slots = AdapterSlots(self.max_loras, self.max_cpu_loras)  # validates before any change
        self._replicas[name] = ReplicaState(name=name, slots=slots)
        self._ring.add_node(name)
        self._walks.clear()

    def remove_replica(self, name: str) -> None:
        self._state(name)
        del self._replicas[name]
        self._ring.remove_node(name)
        self._walks.clear()

    def set_healthy(self, name: str, healthy: bool) -> None:
        state = self._state(name)
        if healthy and not state.healthy:
            # It may have restarted: trust nothing it held before.
            state.slots.clear()
        state.healthy = healthy

    def healthy(self) -> list[str]:
        return [name for name, state in self._replicas.items() if state.healthy]

    # -- placement -------------------------------------------------------------------------

    def walk(self, adapter: str) -> tuple[str, ...]:
        """Every replica in the adapter's ring order (its homes first)."""
        walk = self._walks.get(adapter)
        if walk is None:
            walk = tuple(n for n in self._ring.iterate_nodes(adapter) if n is not None)
            self._walks[adapter] = walk
        return walk

    def homes(self, adapter: str) -> tuple[str, ...]:
        """The replicas an adapter lives on while they are healthy and not overloaded."""
        return self.walk(adapter)[: self.home_count]

    def capacity(self) -> int:
        """Most requests in flight a replica may hold before the next one spills past it."""
        healthy = self.healthy()
        if not healthy:
            raise NoHealthyReplicaError("no healthy replica")
        total = sum(self._replicas[n].in_flight for n in healthy)
        return math.ceil(self.load_factor * (total + 1) / len(healthy))

    def route(self, adapter: str | None) -> Route:
        """Choose the replica for one request and count it in flight there."""
        if adapter is None:
            healthy = self.healthy()
            if not healthy:
                raise NoHealthyReplicaError("no healthy replica")
            # Ties go to the name, so the choice is deterministic.
            name = min(healthy, key=lambda n: (self._replicas[n].in_flight, n))
            return self._start(name, None, spilled=False)
        capacity = self.capacity()
        walk = self.walk(adapter)
        homes = [
            n
            for n in walk[: self.home_count]
            if self._replicas[n].healthy and self._replicas[n].in_flight < capacity
        ]
        if homes:
            # Among homes, one that already holds the adapter saves a load; then the least
            # loaded; then ring order (min is stable).
            name = min(
                homes,
                key=lambda n: (
                    not self._replicas[n].slots.holds(adapter),
                    self._replicas[n].in_flight,
                ),
            )
            return self._start(name, adapter, spilled=False)
        for name in walk[self.home_count :]:
            state = self._replicas[name]
            if state.healthy and state.in_flight < capacity:
                return self._start(name, adapter, spilled=True)
        # Unreachable while capacity > mean load; kept as a clear error, not a silent None.
        raise NoHealthyReplicaError(f"no healthy replica below capacity {capacity}")

    def finish(self, route: Route) -> None:
        """The request placed by `route` ended (success, error or client disconnect)."""
        state = self._replicas.get(route.replica)
        if state is None:
            return  # the replica was removed meanwhile; nothing left to account
        if state.in_flight <= 0:
            raise ValueError(f"no request in flight on {route.replica!r} to finish")
        state.in_flight -= 1
        if route.adapter is not None:
            state.slots.done(route.adapter)

    def forget(self, replica: str, adapter: str) -> None:
        """A load of `adapter` into `replica` failed: it does not hold it."""
        self._state(replica).slots.forget(adapter)

    def _start(self, name: str, adapter: str | None, *, spilled: bool) -> Route:
        state = self._replicas[name]
        state.in_flight += 1
        state.served += 1
        change = state.slots.use(adapter) if adapter is not None else None
        return Route(replica=name, adapter=adapter, spilled=spilled, slots=change)

    def _state(self, name: str) -> ReplicaState:
        try:
            return self._replicas[name]
        except KeyError:
            raise ValueError(f"unknown replica {name!r}") from None
