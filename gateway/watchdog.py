"""Engine death turns into a process exit, so that a supervisor restarts the gateway.

vLLM's engine runs in its own process; if that process dies (killed, out of memory, a
crashed kernel) the `AsyncLLM` in the gateway is marked errored and can never serve again.
Without this watch the gateway would keep answering 503 forever. With it, the gateway
notices within `interval_s`, logs why, stops admitting, and asks the server to shut down
(`stop`, set by `gateway.server.serve`); the server then exits non-zero.

Only engines whose death is final are watched (`Engine.fatal_when_unhealthy`): a
`RemoteEngine` with every replica down recovers when one answers /health again, so the
gateway stays up and answers 503 with Retry-After until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from gateway.engine import Engine
from gateway.serving import Admission

__all__ = ["EngineWatchdog"]

log = logging.getLogger("tunegate.gateway")


class EngineWatchdog:
    def __init__(
        self, bases: Mapping[str, Engine], admission: Admission, interval_s: float = 0.5
    ) -> None:
        self.bases = bases
        self.admission = admission
        self.interval_s = interval_s
        self.failure: str | None = None  # why the gateway must exit; None while healthy
        self.stop: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="engine-watchdog")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def check(self) -> str | None:
        dead = [
            model_id
            for model_id, engine in self.bases.items()
            if engine.fatal_when_unhealthy and not engine.healthy
        ]
        if dead and self.failure is None:
            self.failure = f"the vLLM engine of {', '.join(dead)} died"
            log.critical("%s: refusing requests and shutting down for a restart", self.failure)
            # New requests get 503 at once; the ones in the engine fail on their own.
            self.admission.draining = True
            if self.stop is not None:
                self.stop()
        return self.failure

    async def _watch(self) -> None:
        while self.check() is None:
            await asyncio.sleep(self.interval_s)
