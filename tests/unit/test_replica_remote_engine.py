"""`RemoteEngine`: the gateway's engine calls carried out on fake vLLM replicas."""

from __future__ import annotations

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
from tests.unit.fake_vllm_replica import BASE, MAX_MODEL_LEN, FakeReplica

pytestmark = pytest.mark.anyio

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
