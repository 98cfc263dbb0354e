"""N remote vLLM replicas behind one `ReplicaRouter`: placement, adapter loads, health.

`ReplicaFleet.post` / `ReplicaFleet.stream` forward one OpenAI request (chat or completions,
its `model` already set to the base model id or the adapter's name) to the replica the router
picks, after the replica loads the adapter if it does not hold it and unloads the cold ones
the router's slot bookkeeping names. Concurrent first requests for one adapter on one replica
share a single load.

Failures: a replica that refuses the connection, or drops it before answering, is marked down
at once and the request moves to the next replica (it never ran there, or its run died with
the replica before the client saw anything); one that times out after the request was sent is
marked down and that request fails (it may still be running). A stream cut after it was
relayed to the client fails that request. A background loop polls every replica's `/health`
each `health_interval_s` seconds, so a dead replica stops receiving requests within about
that long even when no request found it first, and a recovered one comes back (with empty
slots: it may have restarted). A replica that answers 404 for an adapter it was thought to
hold (restarted between two polls) gets the adapter loaded again and the request retried once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from gateway.replicas.client import AdapterRefusedError, ReplicaClient, ReplicaDownError
from gateway.replicas.policy import NoHealthyReplicaError, ReplicaRouter, Route

__all__ = ["AdapterTarget", "ReplicaFleet", "ReplicaStats"]

log = logging.getLogger("tunegate.gateway.replicas")


@dataclass(frozen=True)
class AdapterTarget:
    """An adapter as replicas load it: its served name and a folder they can all read."""

    name: str
    path: str


@dataclass
class ReplicaStats:
    """Counters of one replica (or one adapter, summed over replicas)."""

    requests: int = 0
    spilled: int = 0
    loads: int = 0
    unloads: int = 0
    load_failures: int = 0
    marked_down: int = 0


class ReplicaFleet:
    """Forwards requests to replicas chosen by adapter affinity and keeps their health."""

    def __init__(
        self,
        clients: Sequence[ReplicaClient],
        *,
        max_loras: int,
        max_cpu_loras: int,
        load_factor: float = 1.25,
        home_count: int = 1,
        health_interval_s: float = 1.0,
    ) -> None:
        if not clients:
            raise ValueError("a replica fleet needs at least one replica")
        if not health_interval_s > 0:
            raise ValueError(f"health_interval_s must be > 0, got {health_interval_s}")
        self.clients: dict[str, ReplicaClient] = {}
        for client in clients:
            if client.url in self.clients:
                raise ValueError(f"replica {client.url} is listed twice")
            self.clients[client.url] = client
        self.router = ReplicaRouter(
            self.clients,
            max_loras=max_loras,
            max_cpu_loras=max_cpu_loras,
            load_factor=load_factor,
            home_count=home_count,
        )
        self.health_interval_s = health_interval_s
        self.replica_stats = {url: ReplicaStats() for url in self.clients}
        self.adapter_stats: dict[str, ReplicaStats] = {}
        # Requests (and spills) per (replica, adapter): which replica served which adapter is
        # what affinity is about, and neither per-replica nor per-adapter sums show it.
        self.pair_stats: dict[tuple[str, str], ReplicaStats] = {}
        self._loading: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._health_task: asyncio.Task[None] | None = None

    # -- lifecycle and health --------------------------------------------------------------

    async def start(self) -> None:
        """Poll every replica once, then keep polling in the background."""
        await self.check_health()
        self._health_task = asyncio.create_task(self._health_loop(), name="replica-health")

    async def aclose(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        for task in list(self._loading.values()):
            task.cancel()
        await asyncio.gather(*(c.aclose() for c in self.clients.values()))

    async def check_health(self) -> dict[str, bool]:
        """One `/health` round over all replicas (concurrently); the router follows it."""
        results = await asyncio.gather(*(c.health() for c in self.clients.values()))
        health = dict(zip(self.clients, results, strict=True))
        for url, healthy in health.items():
            if not healthy and url in self.router.healthy():
                self._mark_down(url, "failed its health check")
            elif healthy:
                self.router.set_healthy(url, True)
        return health

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            try:
                await self.check_health()
            except Exception:  # a bug here must not stop health checking for good
                log.exception("replica health check failed")

    def _mark_down(self, url: str, why: str) -> None:
        if not self.router.replicas[url].healthy:
            return  # out already: the other requests it failed are the same event
        log.warning("replica %s marked down: %s", url, why)
        self.router.set_healthy(url, False)
        self.replica_stats[url].marked_down += 1

    def snapshot(self) -> dict[str, Any]:
        """Per-replica, per-adapter and per-(replica, adapter) counters plus live state (for
        metrics and tests)."""
        replicas = {}
        for url, state in self.router.replicas.items():
            replicas[url] = {
                **asdict(self.replica_stats[url]),
                "healthy": state.healthy,
                "in_flight": state.in_flight,
                "adapters": state.slots.held,
            }
        adapters = {name: asdict(stats) for name, stats in self.adapter_stats.items()}
        pairs = [
            {"replica": url, "adapter": name, "requests": stats.requests, "spilled": stats.spilled}
            for (url, name), stats in self.pair_stats.items()
        ]
        return {"replicas": replicas, "adapters": adapters, "pairs": pairs}

    # -- forwarding ------------------------------------------------------------------------

    async def post(
        self, path: str, body: dict[str, Any], adapter: AdapterTarget | None
    ) -> httpx.Response:
        """Forward a non-streamed request; the replica's answer (any status) is returned."""
        reloaded = False
        for _ in range(2 * len(self.clients) + 1):
            client, route = await self._place(adapter)
            try:
                response = await client.post(path, body)
            except ReplicaDownError as exc:
                self._mark_down(route.replica, str(exc))
                if exc.sent:
                    raise
                continue
            finally:
                self.router.finish(route)
            if not reloaded and self._lost_adapter(response, route):
                reloaded = True
                continue
            return response
        raise NoHealthyReplicaError("no replica took the request")

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, body: dict[str, Any], adapter: AdapterTarget | None
    ) -> AsyncIterator[httpx.Response]:
        """Forward a streamed request; yields the open response (read its body inside)."""
        reloaded = False
        for _ in range(2 * len(self.clients) + 1):
            client, route = await self._place(adapter)
            opened = False
            try:
                async with client.stream(path, body) as response:
                    if not reloaded and self._lost_adapter(response, route):
                        reloaded = True
                        continue
                    opened = True
                    yield response
                    return
            except ReplicaDownError as exc:
                if opened:
                    raise
                self._mark_down(route.replica, str(exc))
                if exc.sent:
                    raise
            finally:
                self.router.finish(route)
        raise NoHealthyReplicaError("no replica took the request")

    def _lost_adapter(self, response: httpx.Response, route: Route) -> bool:
        """The replica answered 404 for an adapter it was thought to hold (it restarted)."""
        if response.status_code != 404 or route.adapter is None:
            return False
        if route.slots is not None and route.slots.load:
            return False  # loaded just now: a 404 is the request's own problem
        log.warning("replica %s lost adapter %s; loading it again", route.replica, route.adapter)
        self.router.forget(route.replica, route.adapter)
        return True

    async def _place(self, adapter: AdapterTarget | None) -> tuple[ReplicaClient, Route]:
        """Route one request and make its replica ready (adapter loaded); retried on replicas
        that turn out to be down. The caller must `router.finish` the route."""
        for _ in range(len(self.clients)):
            route = self.router.route(adapter.name if adapter is not None else None)
            stats = self.replica_stats[route.replica]
            stats.requests += 1
            stats.spilled += route.spilled
            if adapter is not None:
                per_adapter = self.adapter_stats.setdefault(adapter.name, ReplicaStats())
                per_adapter.requests += 1
                per_adapter.spilled += route.spilled
                pair = self.pair_stats.setdefault((route.replica, adapter.name), ReplicaStats())
                pair.requests += 1
                pair.spilled += route.spilled
            client = self.clients[route.replica]
            try:
                if adapter is not None:
                    await self._prepare(client, route, adapter)
            except ReplicaDownError as exc:
                self.router.finish(route)
                self._mark_down(route.replica, str(exc))
                continue  # the request itself was not sent: try the next replica
            except BaseException:
                self.router.finish(route)
                raise
            return client, route
        raise NoHealthyReplicaError("every replica failed while loading the adapter")

    async def _prepare(self, client: ReplicaClient, route: Route, adapter: AdapterTarget) -> None:
        assert route.slots is not None
        stats = self.replica_stats[route.replica]
        per_adapter = self.adapter_stats[adapter.name]
        for victim in route.slots.unload:
            try:
                await client.unload_adapter(victim)
                stats.unloads += 1
            except AdapterRefusedError as exc:
                # The router forgot it already; the replica keeps a name registered, which
                # costs it nothing but a registry entry (its weights cache is an LRU).
                log.warning("%s", exc)
        key = (route.replica, adapter.name)
        task = self._loading.get(key)
        if route.slots.load and task is None:
            stats.loads += 1
            per_adapter.loads += 1
            task = asyncio.create_task(client.load_adapter(adapter.name, adapter.path))
            self._loading[key] = task
            task.add_done_callback(lambda done: self._loaded(key, done))
        if task is None:
            return
        try:
            # Shielded: one waiter's cancellation must not cancel the load for the others.
            await asyncio.shield(task)
        except AdapterRefusedError:
            stats.load_failures += 1
            raise

    def _loaded(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._loading.get(key) is task:
            del self._loading[key]
        if task.cancelled() or task.exception() is not None:
            replica, adapter = key
            with contextlib.suppress(ValueError):  # the replica may have been removed
                self.router.forget(replica, adapter)
