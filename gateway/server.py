"""Run the gateway under uvicorn until SIGINT/SIGTERM, then drain and flush."""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunegate.config import Settings

__all__ = ["serve"]

log = logging.getLogger("tunegate.gateway")


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Blocks until the server stops. uvicorn turns SIGTERM into a graceful shutdown: it
    stops accepting, waits for open requests (up to drain_timeout_s), then runs the app's
    shutdown, which stops the engines and flushes accounting."""
    import uvicorn

    from gateway.app import create_app

    config = settings.gateway
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host or config.host,
            port=port or config.port,
            log_level="info",
            # Streams are answered by our own generator; keep uvicorn's per-connection
            # work minimal.
            access_log=False,
            timeout_graceful_shutdown=int(config.drain_timeout_s) + 1,
            lifespan="on",
        )
    )
    # uvicorn turns SIGTERM into a graceful shutdown, then re-raises the signal once it is
    # done. With the default disposition that kills the process (exit -15) although the
    # drain and flush succeeded; this handler makes that re-raise an orderly exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    # A dead engine cannot recover in this process: the watchdog stops the server, and
    # the error below makes the exit status non-zero so that a supervisor restarts it.
    watchdog = app.state.watchdog
    watchdog.stop = lambda: setattr(server, "should_exit", True)
    server.run()
    if not server.started:
        raise RuntimeError("the gateway failed to start (see the log above)")
    if watchdog.failure is not None:
        # The server has stopped and accounting is flushed. Threads of the dead engine's
        # client can keep the interpreter from exiting (seen with vLLM 0.32 after its
        # engine process was killed), so leave at once with a failure status.
        log.critical("%s; exiting with status 1 so that a supervisor restarts it", watchdog.failure)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
