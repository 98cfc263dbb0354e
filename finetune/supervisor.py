"""`tunegate serve`'s worker: a `tunegate worker` child process, restarted if it dies.

A child process rather than a thread: training holds the GIL for seconds at a time and
takes gigabytes, neither of which the gateway's event loop should share. A crash of the
worker is recovered by the next one (it requeues the job it was running).
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence

__all__ = ["WorkerSupervisor", "supervised_worker"]

log = logging.getLogger("tunegate.worker")


class WorkerSupervisor:
    def __init__(
        self, argv: Sequence[str], *, stop_timeout_s: float = 60.0, max_backoff_s: float = 30.0
    ) -> None:
        self.argv = list(argv)
        self.stop_timeout_s = stop_timeout_s
        self.max_backoff_s = max_backoff_s
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                self.process = subprocess.Popen(self.argv)
            log.info("fine-tuning worker started (pid %d)", self.process.pid)
            code = self.process.wait()
            if self._stopping.is_set():
                return
            log.warning("fine-tuning worker exited with %s; restarting in %.0f s", code, backoff)
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def stop(self) -> None:
        """SIGTERM (the worker stops at its next training step and requeues its job)."""
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "the worker ignored SIGTERM for %.0f s; killing it", self.stop_timeout_s
                )
                process.kill()
                process.wait()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def supervised_worker(enabled: bool, config_file: str | None) -> Iterator[WorkerSupervisor | None]:
    """Runs `tunegate worker` beside the caller while the block runs (when `enabled`)."""
    if not enabled:
        yield None
        return
    argv = [sys.executable, "-m", "tunegate"]
    if config_file:
        argv += ["--config", config_file]
    supervisor = WorkerSupervisor([*argv, "worker"])
    supervisor.start()
    try:
        yield supervisor
    finally:
        supervisor.stop()
