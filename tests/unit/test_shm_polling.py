"""Polite polling of vLLM's shm queues: the spin-then-nap rule, its settings, its install."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from importlib.metadata import entry_points

import pytest
from vllm.distributed import utils as vllm_dist_utils
from vllm.distributed.device_communicators import shm_broadcast
from vllm.platforms import current_platform

from gateway import shm_polling
from gateway.shm_polling import PoliteYield


class _Clock:
    """A monotonic clock the test moves; the fake spin and sleep record and advance it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def spin(self) -> None:
        self.calls.append("spin")
        self.now += 100e-6

    def sleep(self, seconds: float) -> None:
        self.calls.append(f"sleep {seconds * 1e6:.0f}")
        self.now += seconds


def _polite(clock: _Clock, spin_s: float = 1e-3, sleep_s: float = 50e-6) -> PoliteYield:
    return PoliteYield(spin_s, sleep_s, clock=clock, spin=clock.spin, sleep=clock.sleep)


def test_spins_through_the_window_then_naps() -> None:
    clock = _Clock()
    poll = _polite(clock, spin_s=950e-6)
    for _ in range(15):
        poll()
    # A spin takes 100 µs here: ten fit in the window, from then on it naps.
    assert clock.calls == ["spin"] * 10 + ["sleep 50"] * 5


def test_work_between_calls_starts_a_new_wait() -> None:
    clock = _Clock()
    poll = _polite(clock, spin_s=150e-6)
    for _ in range(4):
        poll()
    assert clock.calls == ["spin", "spin", "sleep 50", "sleep 50"]
    clock.calls.clear()
    clock.now += 0.5e-3  # a short pass of work: still the same wait
    poll()
    assert clock.calls == ["sleep 50"]
    clock.calls.clear()
    clock.now += 2e-3  # a decode step's worth of work: a new wait spins again
    poll()
    poll()
    assert clock.calls == ["spin", "spin"]


def test_zero_window_never_spins() -> None:
    clock = _Clock()
    poll = _polite(clock, spin_s=0.0)
    poll()
    clock.now += 1.0
    poll()
    assert clock.calls == ["sleep 50", "sleep 50"]


def test_each_thread_has_its_own_wait() -> None:
    clock = _Clock()
    poll = _polite(clock, spin_s=10e-6)
    for _ in range(10):
        poll()
    assert clock.calls[-1] == "sleep 50"
    clock.calls.clear()
    worker = threading.Thread(target=poll)
    worker.start()
    worker.join()
    assert clock.calls == ["spin"]  # its first call, though this thread is napping


@pytest.mark.parametrize(("spin_s", "sleep_s"), [(-1e-6, 50e-6), (1e-3, 0.0)])
def test_bad_timings_are_refused(spin_s: float, sleep_s: float) -> None:
    with pytest.raises(ValueError, match="spin_s must be >= 0 and sleep_s > 0"):
        PoliteYield(spin_s, sleep_s)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (1e-3, 50e-6)),
        ({"TUNEGATE_GATEWAY_SHM_POLL": " on "}, (1e-3, 50e-6)),
        ({"TUNEGATE_GATEWAY_SHM_POLL": "off"}, None),
        ({"TUNEGATE_GATEWAY_SHM_POLL": "0", "TUNEGATE_GATEWAY_SHM_POLL_SPIN_US": "x"}, None),
        ({"TUNEGATE_GATEWAY_SHM_POLL_SPIN_US": "0"}, (0.0, 50e-6)),
        (
            {
                "TUNEGATE_GATEWAY_SHM_POLL_SPIN_US": "250",
                "TUNEGATE_GATEWAY_SHM_POLL_SLEEP_US": "20",
            },
            (250e-6, 20e-6),
        ),
    ],
)
def test_settings(env: dict[str, str], expected: tuple[float, float] | None) -> None:
    assert shm_polling.settings(env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TUNEGATE_GATEWAY_SHM_POLL": "maybe"}, r"TUNEGATE_GATEWAY_SHM_POLL='maybe' is not a"),
        ({"TUNEGATE_GATEWAY_SHM_POLL_SPIN_US": "1ms"}, r"SPIN_US='1ms' is not a whole number"),
        ({"TUNEGATE_GATEWAY_SHM_POLL_SPIN_US": "-5"}, r"of µs \(0 or more\)"),
        ({"TUNEGATE_GATEWAY_SHM_POLL_SLEEP_US": "0"}, r"SLEEP_US='0' .* of µs \(1 or more\)"),
    ],
)
def test_unreadable_settings_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shm_polling.settings(env)


@pytest.fixture
def stock_polling(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """shm_broadcast with vLLM's own `sched_yield`, restored after the test."""
    monkeypatch.setattr(shm_broadcast, "sched_yield", vllm_dist_utils.sched_yield)
    for name in (shm_polling.ENV_VAR, shm_polling.SPIN_ENV_VAR, shm_polling.SLEEP_ENV_VAR):
        monkeypatch.delenv(name, raising=False)
    yield


def test_register_installs_once_with_the_settings(
    stock_polling: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(shm_polling.SPIN_ENV_VAR, "300")
    shm_polling.register()
    installed = shm_broadcast.sched_yield
    assert shm_polling.is_active() and isinstance(installed, PoliteYield)
    assert (installed.spin_s, installed.sleep_s) == (300e-6, 50e-6)
    shm_polling.register()
    assert shm_broadcast.sched_yield is installed
    installed()  # and it polls for real: a spin, then it returns


def test_switched_off_leaves_vllm_loop(
    stock_polling: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(shm_polling.ENV_VAR, "0")
    shm_polling.register()
    assert shm_broadcast.sched_yield is vllm_dist_utils.sched_yield
    assert not shm_polling.is_active()


def test_other_platform_leaves_vllm_loop(
    stock_polling: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(current_platform), "is_cpu", lambda self: False)
    shm_polling.register()
    assert shm_broadcast.sched_yield is vllm_dist_utils.sched_yield


def test_changed_vllm_polling_warns_and_is_left(
    stock_polling: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def theirs() -> None:
        return None

    monkeypatch.setattr(shm_broadcast, "sched_yield", theirs)
    with caplog.at_level(logging.WARNING, logger="vllm.tunegate.shm_polling"):
        shm_polling.register()
    assert shm_broadcast.sched_yield is theirs
    assert any("no longer polls" in r.message for r in caplog.records)


def test_entry_point_is_registered_with_vllm() -> None:
    found = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert found.get("tunegate_shm_polling") == "gateway.shm_polling:register"
