"""`RemoteEngine`: the gateway's engine calls carried out on fake vLLM replicas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import EngineConfig
from gateway.engine import (
    Adapter,
    AdapterLoadFailedError,
    Delta,
    EngineRequestError,
    EngineSpec,
    GenerationParams,
    InvalidPromptError,
)
from gateway.errors import EngineUnavailableError
from gateway.replicas import ReplicaClient, ReplicaFleet
from gateway.replicas.remote_engine import RemoteEngine
from tests.unit.fake_vllm_replica import BASE, MAX_MODEL_LEN, FakeReplica, gateway_over_fakes

pytestmark = pytest.mark.anyio

ARTIFACT_LABEL = "tunegate_artifact"
ADAPTER = Adapter(name="support@2", uid=7, path=Path("/shared/blobs/support/2"))


def _engine(n: int = 2) -> tuple[RemoteEngine, dict[str, FakeReplica]]:
    fakes = {f"http://replica-{i}:8000": FakeReplica(f"http://replica-{i}:8000") for i in range(n)}
    fleet = ReplicaFleet(
        [ReplicaClient(url, transport=fake.transport()) for url, fake in fakes.items()],
        max_loras=2,
        max_cpu_loras=4,
        health_interval_s=60,  # the tests poll by hand
    )
    spec = EngineSpec(model_id=BASE, path=Path("/unused"), enable_lora=True)
    return RemoteEngine(spec, EngineConfig(max_model_len=4096), fleet), fakes


async def _collect(
    engine: RemoteEngine, adapter: Adapter | None, *, stream: bool, **params: object
) -> list[Delta]:
    prompt = await engine.render_chat([{"role": "user", "content": "hello there"}])
    generation = GenerationParams(max_tokens=4, stream=stream, **params)  # type: ignore[arg-type]
    return [d async for d in engine.generate(prompt, generation, "req-1", adapter)]


async def test_start_takes_the_replicas_context_length_and_health() -> None:
    engine, fakes = _engine()
    assert not engine.healthy
    await engine.start()
    assert engine.healthy and engine.max_model_len == MAX_MODEL_LEN  # below the config's
    fakes["http://replica-0:8000"].healthy = False
    await engine.fleet.check_health()
    assert engine.healthy  # one replica left is enough
    fakes["http://replica-1:8000"].healthy = False
    await engine.fleet.check_health()
    assert not engine.healthy
    await engine.aclose()


async def test_start_fails_clearly_when_no_replica_answers() -> None:
    engine, fakes = _engine()
    for fake in fakes.values():
        fake.refusing = True
    with pytest.raises(RuntimeError, match="no replica of base-model answers /health"):
        await engine.start()


async def test_render_uses_the_replicas_tokenizer_and_reports_bad_prompts() -> None:
    engine, _ = _engine()
    await engine.start()
    chat = await engine.render_chat([{"role": "user", "content": "a b c"}])
    assert len(chat) == 1 + 1 + 3 + 1  # bos, role, words, generation prompt
    assert await engine.render_text([5, 6]) == [5, 6]
    assert len(await engine.render_text("x y")) == 3
    with pytest.raises(InvalidPromptError, match="unknown role"):
        await engine.render_chat([{"role": "robot", "content": "x"}])
    await engine.aclose()


async def test_non_streamed_generation_is_one_final_delta_with_usage() -> None:
    engine, fakes = _engine()
    await engine.start()
    (delta,) = await _collect(engine, None, stream=False, temperature=0.0, seed=3)
    assert delta.text == "base-model 0 1 2" and delta.num_tokens == 4
    assert delta.finished and delta.finish_reason == "length"
    assert delta.prompt_tokens == 5 and delta.cached_tokens == 0  # bos, role, 2 words, gen
    body = next(b for f in fakes.values() for b in f.bodies if "max_tokens" in b)
    # Set fields are sent, unset ones left to the replica's generation config.
    assert body["temperature"] == 0.0 and body["seed"] == 3 and "top_p" not in body
    assert body["request_id"] == "req-1" and body["return_token_ids"] is True
    await engine.aclose()


async def test_streamed_generation_through_an_adapter_loads_it_on_its_home() -> None:
    engine, fakes = _engine()
    await engine.start()
    deltas = await _collect(engine, ADAPTER, stream=True)
    assert "".join(d.text for d in deltas) == "support@2 0 1 2"
    assert [d.num_tokens for d in deltas] == [1, 1, 1, 1, 0]
    assert deltas[-1].finished and deltas[-1].finish_reason == "length"
    home = engine.fleet.router.homes(ADAPTER.name)[0]
    assert fakes[home].loaded == {ADAPTER.name: str(ADAPTER.path)}
    assert fakes[home].served("/v1/completions") == [ADAPTER.name]
    assert engine.running() == 0
    await engine.aclose()


async def test_adapter_the_replica_cannot_load_is_an_adapter_load_failure() -> None:
    engine, _ = _engine()
    await engine.start()
    broken = Adapter(name="broken@1", uid=9, path=Path("/shared/missing"))
    with pytest.raises(AdapterLoadFailedError, match="broken@1"):
        await _collect(engine, broken, stream=True)
    await engine.aclose()


async def test_bad_sampling_is_the_clients_error() -> None:
    engine, _ = _engine()
    await engine.start()
    with pytest.raises(EngineRequestError, match="temperature"):
        await _collect(engine, None, stream=False, temperature=-1.0)
    await engine.aclose()


async def test_replica_dying_mid_request_is_a_retryable_503_and_others_go_on() -> None:
    engine, fakes = _engine()
    await engine.start()
    home = engine.fleet.router.homes(ADAPTER.name)[0]
    fakes[home].cut_after = 2
    with pytest.raises(EngineUnavailableError) as info:
        await _collect(engine, ADAPTER, stream=True)
    assert info.value.status_code == 503 and engine.running() == 0
    # It is now gone for good: the health poll takes it out and the adapter moves on.
    fakes[home].refusing = True
    await engine.fleet.check_health()
    deltas = await _collect(engine, ADAPTER, stream=False)
    assert deltas[-1].text == "support@2 0 1 2"
    other = next(url for url in fakes if url != home)
    assert fakes[other].served("/v1/completions") == [ADAPTER.name]
    await engine.aclose()


# -- through the gateway (`gateway.replicas.urls`) ----------------------------------------


def test_gateway_serves_base_and_adapters_from_configured_replicas(
    home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from litestar.testing import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from adapters_store import BaseRegistry, Store
    from adapters_store.testing import write_lora
    from gateway.app import create_app

    base = "tiny-random-llama"
    urls = ["http://127.0.0.1:9101", "http://127.0.0.1:9102"]
    settings, fakes = gateway_over_fakes(monkeypatch, urls, base)
    store = Store(home / "store", BaseRegistry(home / "models"))
    registry = BaseRegistry(home / "models")
    store.publish(write_lora(tmp_path / "lora", registry.get(base), r=4), "support")
    app = create_app(settings, store=store)
    user = [{"role": "user", "content": "my router is down"}]
    with TestClient(app) as client:
        assert client.get("/health").json()["engines"][base]["healthy"]
        for model in (base, "support", "support"):
            reply = client.post("/v1/chat/completions", json={"model": model, "messages": user})
            assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["choices"][0]["message"]["content"].startswith("support@1")
        assert answer["usage"]["completion_tokens"] > 0
        streamed = client.post(
            "/v1/chat/completions",
            json={"model": "support", "messages": user, "stream": True, "max_tokens": 3},
        )
        assert streamed.status_code == 200
        chunks = [
            json.loads(line[len("data: ") :])
            for line in streamed.text.splitlines()
            if line.startswith("data: {")
        ]
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        assert text == "support@1 0 1"
        metrics = client.get("/metrics").text
    loads = [(u, c) for u, f in fakes.items() for c in f.calls if c[0] == "/v1/load_lora_adapter"]
    assert len(loads) == 1  # loaded once, on its home replica, and served there after
    home_url = loads[0][0]
    assert fakes[home_url].served("/v1/completions").count("support@1") == 3
    assert str(store.resolve("support").path) in fakes[home_url].loaded.values()
    # Per-replica and per-adapter series, read from the fleet's counters at the scrape.
    series = {
        (
            sample.name,
            sample.labels.get("tunegate_replica") or sample.labels.get(ARTIFACT_LABEL),
        ): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    }
    assert series[("tunegate_replica_adapter_loads_total", home_url)] == 1
    assert series[("tunegate_replica_healthy", home_url)] == 1
    assert series[("tunegate_adapter_replica_requests_total", "support@1")] == 3
    pairs = {
        (sample.labels["tunegate_replica"], sample.labels[ARTIFACT_LABEL]): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "tunegate_replica_adapter_requests_total"
    }
    assert pairs == {(home_url, "support@1"): 3}


def test_replica_settings_are_validated() -> None:
    from gateway.replicas.config import ReplicasConfig

    for kwargs, message in [
        ({"urls": ["http://a:1", "http://a:1"]}, "twice"),
        ({"urls": ["a:1"]}, "http"),
        ({"load_factor": 1.0}, "load_factor"),
        ({"home_count": 0}, "home_count"),
        ({"health_interval_s": 0}, "health_interval_s"),
    ]:
        with pytest.raises(ValueError, match=message):
            ReplicasConfig(**kwargs)  # type: ignore[arg-type]


def test_replicas_serve_one_base_model_only() -> None:
    from gateway.config import GatewayConfig
    from gateway.replicas.config import ReplicasConfig
    from gateway.replicas.remote_engine import remote_engine

    config = GatewayConfig(
        engine=EngineConfig(bases=["a", "b"]), replicas=ReplicasConfig(urls=["http://r:1"])
    )
    spec = EngineSpec(model_id="a", path=Path("/unused"), enable_lora=True)
    with pytest.raises(ValueError, match="one base model"):
        remote_engine(spec, config)
