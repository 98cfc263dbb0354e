"""Engines for `model` artifacts (distilled students, fully tuned models), started on demand.

A full model cannot ride on the base's engine as an adapter does, so each served version
gets its own `AsyncLLM`. Starting one takes tens of seconds and holds its own KV cache, so at
most `max_engines` live at once; when a new one is needed the least recently used engine
with no request in flight is shut down, and when every engine is busy the request is told
to retry (503 + Retry-After) rather than queued behind a start-up it cannot see.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.config import EngineConfig
from gateway.engine import Engine, EngineSpec
from gateway.errors import OverloadedError, ServerError

if TYPE_CHECKING:
    from adapters_store.catalog import ArtifactVersion

__all__ = ["ModelEngines"]

log = logging.getLogger("tunegate.gateway")


class ModelEngines:
    def __init__(
        self,
        config: EngineConfig,
        factory: Callable[[EngineSpec, EngineConfig], Engine] = Engine,
    ) -> None:
        self.config = config
        self.factory = factory
        self.max_engines = config.max_model_engines
        self._engines: dict[str, Engine] = {}
        self._starting: dict[str, asyncio.Task[Engine]] = {}
        self._last_used: dict[str, float] = {}
        self._lock = asyncio.Lock()

    @property
    def engines(self) -> dict[str, Engine]:
        return dict(self._engines)

    async def get(self, version: ArtifactVersion) -> Engine:
        ref = version.ref
        self._last_used[ref] = time.monotonic()
        engine = self._engines.get(ref)
        if engine is not None:
            return engine
        async with self._lock:
            task = self._starting.get(ref)
            if task is None:
                if ref in self._engines:
                    return self._engines[ref]
                self._make_room()
                task = asyncio.create_task(self._start(version), name=f"start-{ref}")
                self._starting[ref] = task
        # Every request for this version waits on the same start-up; shield it so one
        # caller's disconnect does not cancel the start for the others.
        return await asyncio.shield(task)

    def _make_room(self) -> None:
        busy = len(self._engines) + len(self._starting)
        if busy < self.max_engines:
            return
        idle = [
            ref
            for ref, engine in self._engines.items()
            if engine.running() == 0 and engine.leases == 0
        ]
        if not idle:
            raise OverloadedError(
                f"all {self.max_engines} model engine(s) are busy; retry shortly",
                retry_after_s=30,
            )
        victim = min(idle, key=lambda r: self._last_used.get(r, 0.0))
        log.info("shutting down idle model engine %s to make room", victim)
        self._engines.pop(victim).shutdown()

    async def _start(self, version: ArtifactVersion) -> Engine:
        spec = EngineSpec(model_id=version.ref, path=version.path, enable_lora=False)
        engine = self.factory(spec, self.config)
        try:
            await engine.start()
        except Exception as exc:
            log.exception("the engine for %s failed to start", version.ref)
            raise ServerError(f"the engine for model {version.ref!r} failed to start") from exc
        finally:
            self._starting.pop(version.ref, None)
        self._engines[version.ref] = engine
        return engine

    def shutdown(self) -> None:
        for task in self._starting.values():
            task.cancel()
        for engine in self._engines.values():
            engine.shutdown()
        self._engines.clear()
