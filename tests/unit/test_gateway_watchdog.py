"""`EngineWatchdog`: a dead in-process engine stops the gateway, a replica fleet that is
down for now does not (the gateway answers 503 and serves again when a replica is back)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import EngineConfig
from gateway.engine import Engine, EngineSpec
from gateway.replicas.remote_engine import RemoteEngine
from gateway.serving import Admission
from gateway.testing import FakeEngine
from gateway.watchdog import EngineWatchdog
from tests.unit.fake_vllm_replica import gateway_over_fakes

SPEC = EngineSpec(model_id="base", path=Path("/unused"), enable_lora=True)


def test_only_engines_that_cannot_heal_are_fatal() -> None:
    assert Engine.fatal_when_unhealthy and FakeEngine.fatal_when_unhealthy
    assert not RemoteEngine.fatal_when_unhealthy


@pytest.mark.parametrize(("fatal", "stops"), [(True, True), (False, False)])
def test_an_unhealthy_engine_stops_the_gateway_only_when_fatal(fatal: bool, stops: bool) -> None:
    engine = FakeEngine(SPEC, EngineConfig())
    engine.fatal_when_unhealthy = fatal
    admission = Admission(8, 1000)
    watchdog = EngineWatchdog({"base": engine}, admission)
    stopped: list[bool] = []
    watchdog.stop = lambda: stopped.append(True)
    assert not engine.healthy  # never started: what `errored` reports after a crash
    failure = watchdog.check()
    assert (failure is not None) is stops
    assert stopped == ([True] if stops else [])
    assert admission.draining is stops


def test_gateway_outlives_all_replicas_down_and_serves_when_one_is_back(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from litestar.testing import TestClient

    from gateway.app import create_app

    base = "tiny-random-llama"
    urls = ["http://127.0.0.1:9201", "http://127.0.0.1:9202"]
    # Health is polled by hand below.
    env = {"TUNEGATE_GATEWAY_REPLICAS_HEALTH_INTERVAL_S": "3600"}
    settings, fakes = gateway_over_fakes(monkeypatch, urls, base, env)
    app = create_app(settings, store=None)
    chat = {"model": base, "messages": [{"role": "user", "content": "is it up"}]}
    with TestClient(app) as client:
        engine = app.state.services.router.bases[base]
        stopped: list[bool] = []
        app.state.watchdog.stop = lambda: stopped.append(True)
        assert client.post("/v1/chat/completions", json=chat).status_code == 200

        for fake in fakes.values():
            fake.healthy = False
        client.blocking_portal.call(engine.fleet.check_health)
        assert not engine.healthy
        assert app.state.watchdog.check() is None and stopped == []
        assert client.get("/health").status_code == 503
        refused = client.post("/v1/chat/completions", json=chat)
        assert refused.status_code == 503 and "retry-after" in refused.headers
        assert refused.json()["error"]["type"] == "server_error"

        fakes[urls[1]].healthy = True
        client.blocking_portal.call(engine.fleet.check_health)
        assert client.get("/health").status_code == 200
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
        assert app.state.watchdog.check() is None and stopped == []
