"""Polite polling of vLLM's shared-memory queues on the CPU, installed as a vLLM plugin.

On the CPU platform vLLM always runs the model in a worker process (the `mp` executor),
and the engine core and the worker talk through `shm_broadcast.MessageQueue`. Each reader
busy-waits for one second after every message, calling `os.sched_yield` in a loop
(`SpinCondition.wait`, `busy_loop_s` hard-coded to 1 s in vLLM 0.32.0), and the writer
does the same while a block is unread. Measured on the 2-core host of docs/DESIGN.md
(EEVDF scheduler): the engine core spins on the core the worker leaves free for the rest
of the machine, and tasks that yield in a loop keep the CPU from everyone else for
seconds. The gateway's event loop then sat idle behind it: a 2000-token stream from the
tiny model arrived in bursts with 4-9 s gaps, `/health` took 5-9 s to answer during it,
and a thread sleeping 10 ms woke 5.4 s late. vLLM knows (issues #19036, #28836; PRs that
make the busy window configurable or sleep in it are open upstream).

`register` replaces the `sched_yield` that `shm_broadcast` imported with `PoliteYield`:
each thread still spins with `os.sched_yield` for a short window when it starts waiting
(a reply that comes within it is picked up as fast as before), then sleeps in short naps,
so a wait that lasts a whole decode step costs the other tasks nothing. Measured with
the defaults (1 ms of spinning, 50 µs naps): no gaps in the stream, `/health` in 30-90 ms
during it, throughput of the SmolLM2 closed loop (1 and 32 concurrent) the same within
run-to-run noise.

Read from the environment, because the plugin runs in vLLM's processes, which never see
tunegate's config file:

- `TUNEGATE_GATEWAY_SHM_POLL` (default on): `0`/`false`/`no`/`off` keeps vLLM's loop.
- `TUNEGATE_GATEWAY_SHM_POLL_SPIN_US` (default 1000): the spinning window, in µs.
- `TUNEGATE_GATEWAY_SHM_POLL_SLEEP_US` (default 50): one nap after it, in µs.

Like `gateway.fast_lora`, this module imports only the standard library (vLLM imports
every plugin in every process).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

from gateway._plugin_env import env_flag, env_whole_number

__all__ = [
    "ENV_VAR",
    "SLEEP_ENV_VAR",
    "SPIN_ENV_VAR",
    "PoliteYield",
    "is_active",
    "register",
    "settings",
]

ENV_VAR = "TUNEGATE_GATEWAY_SHM_POLL"
SPIN_ENV_VAR = "TUNEGATE_GATEWAY_SHM_POLL_SPIN_US"
SLEEP_ENV_VAR = "TUNEGATE_GATEWAY_SHM_POLL_SLEEP_US"
_DEFAULT_SPIN_US = 1000
_DEFAULT_SLEEP_US = 50
# A thread that worked this long between two calls has received something and is waiting
# anew: it gets a fresh spinning window. Polling a queue between two calls takes
# microseconds, so only real work (a decode step, a scheduling pass) passes this.
_NEW_WAIT_AFTER_S = 1e-3

logger = logging.getLogger("vllm.tunegate.shm_polling")


class PoliteYield:
    """A drop-in for vLLM's `sched_yield` in a polling loop: spin first, then nap.

    Per thread, a run of calls with less than `_NEW_WAIT_AFTER_S` between the end of one
    and the start of the next is one wait. During its first `spin_s` each call yields the
    CPU (`spin`, `os.sched_yield`); after that each call sleeps `sleep_s`.
    """

    def __init__(
        self,
        spin_s: float,
        sleep_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        spin: Callable[[], None] = os.sched_yield,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if spin_s < 0 or sleep_s <= 0:
            raise ValueError(f"spin_s must be >= 0 and sleep_s > 0, got {spin_s}, {sleep_s}")
        self.spin_s = spin_s
        self.sleep_s = sleep_s
        self._clock = clock
        self._spin = spin
        self._sleep = sleep
        # vLLM polls from several threads of one process (the engine core's busy loop and
        # its output thread); each has its own waits.
        self._waits = threading.local()

    def __call__(self) -> None:
        waits = self._waits
        now = self._clock()
        last_end: float | None = getattr(waits, "last_end", None)
        if last_end is None or now - last_end > _NEW_WAIT_AFTER_S:
            waits.started = now
        if now - waits.started < self.spin_s:
            self._spin()
        else:
            self._sleep(self.sleep_s)
        waits.last_end = self._clock()


def settings(env: Mapping[str, str] | None = None) -> tuple[float, float] | None:
    """(spin_s, sleep_s) from the environment, or None where the switch is off.

    A value that cannot be read is an error, not a default: a typo must not silently
    bring back (or change) the loop that starves the machine.
    """
    env = os.environ if env is None else env
    if not env_flag(env, ENV_VAR, default=True):
        return None
    spin_us = env_whole_number(env, SPIN_ENV_VAR, default=_DEFAULT_SPIN_US, minimum=0, unit="µs")
    sleep_us = env_whole_number(env, SLEEP_ENV_VAR, default=_DEFAULT_SLEEP_US, minimum=1, unit="µs")
    return spin_us / 1e6, sleep_us / 1e6


def is_active() -> bool:
    """Whether this process's shm_broadcast polls with `PoliteYield`."""
    import sys

    module = sys.modules.get("vllm.distributed.device_communicators.shm_broadcast")
    return isinstance(getattr(module, "sched_yield", None), PoliteYield)


def register() -> None:
    """The `vllm.general_plugins` entry point; safe to call more than once per process."""
    chosen = settings()
    if chosen is None:
        logger.info("tunegate polite shm polling off (%s); vLLM's busy loop is used.", ENV_VAR)
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        # Elsewhere the worker has its own device to wait on and the cores are many.
        logger.debug("tunegate polite shm polling is for the CPU platform only; not installed.")
        return
    if is_active():
        return
    from vllm.distributed import utils
    from vllm.distributed.device_communicators import shm_broadcast

    if getattr(shm_broadcast, "sched_yield", None) is not utils.sched_yield:
        # Another vLLM polls differently: leave it rather than patch what we never tested.
        logger.warning(
            "vLLM's shm_broadcast no longer polls with vllm.distributed.utils.sched_yield: "
            "tunegate polite shm polling not installed."
        )
        return
    spin_s, sleep_s = chosen
    # The module global, looked up at each call: MessageQueue's readers and writers (and
    # nothing else in vLLM) pick it up, including queues made before this ran.
    shm_broadcast.sched_yield = PoliteYield(spin_s, sleep_s)  # type: ignore[attr-defined]
    logger.info(
        "tunegate polite shm polling active: spin %.0f µs, then %.0f µs naps (set %s=0 to "
        "disable).",
        spin_s * 1e6,
        sleep_s * 1e6,
        ENV_VAR,
    )
