"""The replica client and fleet against fake vLLM OpenAI servers (httpx MockTransport)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from gateway.replicas.client import AdapterRefusedError, ReplicaClient, ReplicaDownError
from gateway.replicas.fleet import AdapterTarget, ReplicaFleet
from gateway.replicas.policy import NoHealthyReplicaError
from tests.unit.fake_vllm_replica import BASE, FakeReplica

pytestmark = pytest.mark.anyio


def _fleet(n: int = 3, **kwargs: Any) -> tuple[ReplicaFleet, dict[str, FakeReplica]]:
    fakes = {f"http://replica-{i}:8000": FakeReplica(f"http://replica-{i}:8000") for i in range(n)}
    clients = [ReplicaClient(url, transport=fake.transport()) for url, fake in fakes.items()]
    kwargs.setdefault("max_loras", 1)
    kwargs.setdefault("max_cpu_loras", 2)
    return ReplicaFleet(clients, **kwargs), fakes


def _adapter(i: int) -> AdapterTarget:
    return AdapterTarget(name=f"adapter-{i}@1", path=f"/shared/blobs/adapter-{i}/1")


async def _chat(fleet: ReplicaFleet, adapter: AdapterTarget | None) -> httpx.Response:
    model = adapter.name if adapter is not None else BASE
    return await fleet.post("/v1/chat/completions", {"model": model, "messages": []}, adapter)


# -- client --------------------------------------------------------------------------------


async def test_client_load_and_unload_are_idempotent() -> None:
    fake = FakeReplica("http://r:1")
    client = ReplicaClient("http://r:1", transport=fake.transport())
    await client.load_adapter("a@1", "/p/a")
    await client.load_adapter("a@1", "/p/a")  # vLLM's 400 "already been loaded"
    assert fake.loaded == {"a@1": "/p/a"}
    await client.unload_adapter("a@1")
    await client.unload_adapter("a@1")  # vLLM's 404: gone already
    assert fake.loaded == {}
    with pytest.raises(AdapterRefusedError, match="No adapter found") as info:
        await client.load_adapter("b@1", "/p/missing")
    assert info.value.status == 404
    await client.aclose()


async def test_client_health_and_down_errors() -> None:
    fake = FakeReplica("http://r:1")
    client = ReplicaClient("http://r:1", transport=fake.transport())
    assert await client.health()
    fake.healthy = False
    assert not await client.health()
    fake.refusing = True
    assert not await client.health()
    with pytest.raises(ReplicaDownError) as info:
        await client.post("/v1/chat/completions", {"model": BASE})
    assert not info.value.sent  # refused: safe to retry elsewhere
    await client.aclose()


@pytest.mark.parametrize("url", ["replica:8000", "ftp://r/", "http://"])
def test_client_refuses_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        ReplicaClient(url)


# -- fleet ---------------------------------------------------------------------------------


async def test_adapter_is_loaded_once_on_its_home_and_served_there() -> None:
    fleet, fakes = _fleet()
    adapter = _adapter(1)
    home = fleet.router.homes(adapter.name)[0]
    for _ in range(3):
        response = await _chat(fleet, adapter)
        assert response.status_code == 200 and response.json()["replica"] == home
    loads = [c for f in fakes.values() for c in f.calls if c[0] == "/v1/load_lora_adapter"]
    assert loads == [("/v1/load_lora_adapter", adapter.name)]
    assert fakes[home].loaded == {adapter.name: adapter.path}
    snapshot = fleet.snapshot()
    assert snapshot["adapters"][adapter.name]["loads"] == 1
    assert snapshot["replicas"][home]["requests"] == 3
    await fleet.aclose()


async def test_concurrent_first_requests_share_one_load() -> None:
    fleet, fakes = _fleet(1, max_loras=1, max_cpu_loras=1, load_factor=100.0)
    fake = next(iter(fakes.values()))
    fake.load_delay_s = 0.05
    responses = await asyncio.gather(*(_chat(fleet, _adapter(1)) for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5
    assert [c for c in fake.calls if c[0] == "/v1/load_lora_adapter"] == [
        ("/v1/load_lora_adapter", "adapter-1@1")
    ]
    assert len(fake.served()) == 5  # each waited for the load: no 404 and retry
    await fleet.aclose()


async def test_cold_adapters_are_unloaded_beyond_max_cpu_loras() -> None:
    fleet, fakes = _fleet(1, max_loras=1, max_cpu_loras=2)
    fake = next(iter(fakes.values()))
    for i in (1, 2, 1, 3):
        assert (await _chat(fleet, _adapter(i))).status_code == 200
    assert sorted(fake.loaded) == ["adapter-1@1", "adapter-3@1"]  # 2 was least recently used
    assert ("/v1/unload_lora_adapter", "adapter-2@1") in fake.calls
    await fleet.aclose()


async def test_refused_replica_is_skipped_and_marked_down_without_a_client_error() -> None:
    fleet, fakes = _fleet()
    adapter = _adapter(2)
    home, second = fleet.router.walk(adapter.name)[:2]
    fakes[home].refusing = True
    response = await _chat(fleet, adapter)
    assert response.status_code == 200 and response.json()["replica"] == second
    assert not fleet.router.replicas[home].healthy
    assert fleet.snapshot()["replicas"][home]["marked_down"] == 1
    # Later requests go straight to the next replica, no more attempts at the dead one.
    calls_before = len(fakes[home].calls)
    await _chat(fleet, adapter)
    assert len(fakes[home].calls) == calls_before
    await fleet.aclose()


async def test_pairs_say_which_replica_served_which_adapter_and_what_spilled() -> None:
    fleet, fakes = _fleet()
    adapter = _adapter(3)
    home, second = fleet.router.walk(adapter.name)[:2]
    for _ in range(2):
        await _chat(fleet, adapter)
    fakes[home].refusing = True
    assert (await _chat(fleet, adapter)).json()["replica"] == second
    await _chat(fleet, None)  # base-model requests have no adapter: no pair
    pairs = {(p["replica"], p["adapter"]): p for p in fleet.snapshot()["pairs"]}
    # The refused attempt was routed to the home too (it never ran there).
    assert pairs == {
        (home, adapter.name): {
            "replica": home,
            "adapter": adapter.name,
            "requests": 3,
            "spilled": 0,
        },
        (second, adapter.name): {
            "replica": second,
            "adapter": adapter.name,
            "requests": 1,
            "spilled": 1,
        },
    }
    await fleet.aclose()


async def test_health_loop_takes_a_dead_replica_out_and_brings_it_back() -> None:
    fleet, fakes = _fleet(health_interval_s=0.01)
    await fleet.start()
    victim = next(iter(fakes))
    fakes[victim].healthy = False
    for _ in range(500):  # bounded wait on the loop, not a timed assertion
        if not fleet.router.replicas[victim].healthy:
            break
        await asyncio.sleep(0.01)
    assert not fleet.router.replicas[victim].healthy
    for _ in range(20):
        assert (await _chat(fleet, None)).json()["replica"] != victim
    fakes[victim].healthy = True
    for _ in range(500):
        if fleet.router.replicas[victim].healthy:
            break
        await asyncio.sleep(0.01)
    assert fleet.router.replicas[victim].healthy
    await fleet.aclose()


async def test_replica_that_lost_its_adapters_gets_them_again() -> None:
    fleet, fakes = _fleet(1)
    fake = next(iter(fakes.values()))
    assert (await _chat(fleet, _adapter(1))).status_code == 200
    fake.loaded.clear()  # restarted between two health polls
    response = await _chat(fleet, _adapter(1))
    assert response.status_code == 200
    loads = [c for c in fake.calls if c[0] == "/v1/load_lora_adapter"]
    assert len(loads) == 2
    await fleet.aclose()


async def test_refused_adapter_is_the_requests_error_and_is_not_remembered() -> None:
    fleet, _ = _fleet(1)
    bad = AdapterTarget(name="bad@1", path="/shared/missing")
    with pytest.raises(AdapterRefusedError):
        await _chat(fleet, bad)
    state = next(iter(fleet.router.replicas.values()))
    assert not state.slots.holds("bad@1") and state.in_flight == 0 and state.healthy
    assert fleet.snapshot()["replicas"][state.name]["load_failures"] == 1
    await fleet.aclose()


async def test_streamed_request_is_forwarded_and_released() -> None:
    fleet, _ = _fleet()
    adapter = _adapter(3)
    body = {"model": adapter.name, "messages": [], "stream": True}
    async with fleet.stream("/v1/chat/completions", body, adapter) as response:
        text = (await response.aread()).decode()
    assert response.status_code == 200 and text.endswith("data: [DONE]\n\n")
    assert json.loads(text.split("\n")[0][len("data: ") :])["model"] == adapter.name
    assert all(s.in_flight == 0 for s in fleet.router.replicas.values())
    await fleet.aclose()


async def test_stream_moves_off_a_refusing_replica() -> None:
    fleet, fakes = _fleet()
    adapter = _adapter(4)
    home = fleet.router.homes(adapter.name)[0]
    fakes[home].refusing = True
    body = {"model": adapter.name, "messages": [], "stream": True}
    async with fleet.stream("/v1/chat/completions", body, adapter) as response:
        await response.aread()
    assert response.status_code == 200
    assert not fleet.router.replicas[home].healthy
    await fleet.aclose()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("error", [httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError])
async def test_a_request_the_replica_dropped_unanswered_runs_on_the_next(
    error: type[httpx.TransportError], stream: bool
) -> None:
    # What a replica SIGKILLed while requests reach it does: its kernel completes the
    # handshake, then resets the connection.
    fleet, fakes = _fleet()
    adapter = _adapter(5)
    home, second = fleet.router.walk(adapter.name)[:2]
    await _chat(fleet, adapter)  # loaded there: the next one is dropped, not its load
    fakes[home].failing = error
    body = {"model": adapter.name, "messages": [], "stream": stream}
    if stream:
        async with fleet.stream("/v1/chat/completions", body, adapter) as response:
            await response.aread()
    else:
        response = await fleet.post("/v1/chat/completions", body, adapter)
    assert response.status_code == 200 and fakes[second].served() == [adapter.name]
    assert not fleet.router.replicas[home].healthy
    await fleet.aclose()


async def test_a_replica_is_counted_down_once_per_death() -> None:
    # Every request it held fails at about the same time; each reports it down.
    fleet, _ = _fleet()
    url = next(iter(fleet.clients))
    for _ in range(3):
        fleet._mark_down(url, "connection dropped")
    assert fleet.snapshot()["replicas"][url]["marked_down"] == 1
    fleet.router.set_healthy(url, True)  # back, then down again: a second event
    fleet._mark_down(url, "connection dropped")
    assert fleet.snapshot()["replicas"][url]["marked_down"] == 2
    await fleet.aclose()


async def test_a_request_that_timed_out_on_its_replica_fails_and_is_not_run_twice() -> None:
    fleet, fakes = _fleet()
    adapter = _adapter(6)
    home, second = fleet.router.walk(adapter.name)[:2]
    await _chat(fleet, adapter)  # loaded there: the next one times out on the request itself
    fakes[home].failing = httpx.ReadTimeout  # the replica may still be running it
    with pytest.raises(ReplicaDownError) as info:
        await _chat(fleet, adapter)
    assert info.value.sent and fakes[second].served() == []
    assert not fleet.router.replicas[home].healthy
    await fleet.aclose()


async def test_all_replicas_down_is_a_clear_error() -> None:
    fleet, fakes = _fleet(2)
    for fake in fakes.values():
        fake.refusing = True
    with pytest.raises(NoHealthyReplicaError):
        await _chat(fleet, _adapter(1))
    with pytest.raises(NoHealthyReplicaError):
        await _chat(fleet, None)
    await fleet.aclose()


def test_fleet_refuses_bad_setups() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ReplicaFleet([], max_loras=1, max_cpu_loras=1)
    twice = [ReplicaClient("http://r:1"), ReplicaClient("http://r:1/")]
    with pytest.raises(ValueError, match="twice"):
        ReplicaFleet(twice, max_loras=1, max_cpu_loras=1)
    with pytest.raises(ValueError, match="health_interval_s"):
        ReplicaFleet(
            [ReplicaClient("http://r:1")], max_loras=1, max_cpu_loras=1, health_interval_s=0
        )
