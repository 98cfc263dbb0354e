"""Two real vLLM OpenAI-server replicas behind tunegate gateways (`gateway.replicas.urls`).

The replicas are vLLM's own server (`python -m vllm.entrypoints.openai.api_server`, CPU,
`--enable-lora`, runtime LoRA loading), started once per module and in parallel, on the
default base model. Adapters made by PEFT are published to the gateway's store and a mixed
workload goes through the official `openai` client. The tests read which replica served
which adapter from the gateway's /metrics (`tunegate_replica_adapter_requests_total` and
`..._spilled_total`, per replica and adapter) and cross-check it with what each replica says
it holds (its own /v1/models). The last test SIGKILLs one replica's process group under load.

Every failure message carries the outcomes, the fleet's series, and the gateway's and
replicas' log tails: a CI failure must be diagnosable from the message alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from adapters_store.bases import BaseModel
from gateway.replicas.policy import ReplicaRouter
from tests.integration.conftest import (
    RunningGateway,
    _free_port,
    launch_gateway,
    link_models,
    make_peft_adapter,
)

pytestmark = [pytest.mark.engine, pytest.mark.slow]

# The replicas' LoRA limits, given to the gateway too (its slot bookkeeping assumes them, see
# gateway/replicas/config.py). max_loras = max_cpu_loras: with fewer GPU slots than adapters
# on a replica, vLLM defers the requests of the adapters that find no slot, and a mixed
# workload runs one adapter's requests after another's (3x slower here).
MAX_LORAS, MAX_CPU_LORAS, MAX_LORA_RANK = 4, 4, 16
ADAPTERS_PER_REPLICA = 2  # homes per replica: 4 adapters fit every replica's max_cpu_loras
START_TIMEOUT_S = 600.0
USER: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "My router blinks red. What should I do?"}
]
REPLICA_LABEL, ARTIFACT_LABEL = "tunegate_replica", "tunegate_artifact"


# -- replicas ------------------------------------------------------------------------------


@dataclass
class Replica:
    """One `vllm.entrypoints.openai.api_server` process (its own process group)."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    launched_at: float
    ready_after_s: float | None = None

    def log_tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        # The gateway polls /health every second: those lines would bury everything else.
        kept = [line for line in text.splitlines() if '"GET /health' not in line]
        return "\n".join(kept[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole group (API server, engine core, worker); returns at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        self.kill()
        self.process.wait(timeout=60)

    def loaded_adapters(self) -> set[str]:
        """What vLLM itself says it holds: LoRA cards in its /v1/models carry a parent."""
        models = httpx.get(self.url + "/v1/models", timeout=30).json()["data"]
        return {m["id"] for m in models if m.get("parent")}


def launch_replica(model: BaseModel, port: int, log: Path, core: int) -> Replica:
    env = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",  # /v1/load_lora_adapter and unload
        "VLLM_CPU_KVCACHE_SPACE": "1",
        # Left to "auto", every replica binds its engine's threads to the same core (the
        # first), and two replicas on one machine run at half speed.
        "VLLM_CPU_OMP_THREADS_BIND": str(core % (os.cpu_count() or 1)),
    }
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model.path),
        "--served-model-name",
        model.id,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-lora",
        "--max-loras",
        str(MAX_LORAS),
        "--max-cpu-loras",
        str(MAX_CPU_LORAS),
        "--max-lora-rank",
        str(MAX_LORA_RANK),
        "--max-model-len",
        "512",
        "--max-num-seqs",
        "16",
        "--seed",
        "0",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Replica(f"http://127.0.0.1:{port}", process, log, time.monotonic())


def wait_ready(replicas: Sequence[Replica]) -> None:
    """Until every replica's /health answers 200; one that exits fails with its log."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while any(r.ready_after_s is None for r in replicas):
        for replica in replicas:
            if replica.ready_after_s is not None:
                continue
            if replica.process.poll() is not None:
                raise RuntimeError(
                    f"replica {replica.url} exited with {replica.process.returncode} during "
                    f"start-up:\n{replica.log_tail(60)}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(replica.url + "/health", timeout=2).status_code == 200:
                    replica.ready_after_s = time.monotonic() - replica.launched_at
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {r.url}\n{r.log_tail(60)}" for r in replicas)
            raise RuntimeError(f"replicas not ready after {START_TIMEOUT_S:.0f} s:\n{tails}")
        time.sleep(0.5)


def adapter_names_by_home(urls: Sequence[str]) -> dict[str, list[str]]:
    """ADAPTERS_PER_REPLICA names homed on each replica (the router's ring, `name@1` being
    what the gateway routes on), so every replica has adapters of its own whatever the ports."""
    router = ReplicaRouter(urls, max_loras=MAX_LORAS, max_cpu_loras=MAX_CPU_LORAS)
    chosen: dict[str, list[str]] = {url: [] for url in urls}
    for i in range(1000):
        name = f"expert-{i}"
        home = router.homes(f"{name}@1")[0]
        if len(chosen[home]) < ADAPTERS_PER_REPLICA:
            chosen[home].append(name)
        if all(len(names) == ADAPTERS_PER_REPLICA for names in chosen.values()):
            return chosen
    raise AssertionError(f"the ring gave no replica-balanced names: {chosen}")


# -- the fleet under test ------------------------------------------------------------------


@dataclass
class Fleet:
    replicas: list[Replica]
    gateway: RunningGateway
    home_of: dict[str, str]  # adapter name -> its home replica URL
    model: BaseModel
    home: Path
    gateway_env: dict[str, str]
    swap_source: Path  # a further PEFT adapter, published as a new version by a test
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def adapters(self) -> list[str]:
        """Versioned references (`name@1`): a later publish must not change what they mean."""
        return sorted(versioned(name) for name in self.home_of)

    def home_replica(self, adapter: str) -> str:
        return self.home_of[adapter.split("@")[0]]

    def diagnosis(self, *extra: object) -> str:
        """What a failure message needs: the caller's facts, the fleet's series, log tails."""
        parts = [str(item) for item in extra]
        with contextlib.suppress(Exception):
            parts.append(f"fleet series: {scrape(self.gateway)}")
        parts.append(f"homes: {self.home_of}")
        parts.append(f"--- gateway log tail:\n{self.gateway.log_tail(40)}")
        for replica in self.replicas:
            alive = "running" if replica.process.poll() is None else "exited"
            parts.append(f"--- replica {replica.url} ({alive}) log tail:\n{replica.log_tail()}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    shared_models_dir: Path,
    default_model: BaseModel,
) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("replicas")
    ports = [_free_port() for _ in range(2)]
    with contextlib.ExitStack() as stack:
        began = time.monotonic()
        replicas = []
        for core, port in enumerate(ports):
            replica = launch_replica(default_model, port, work / f"replica-{port}.log", core)
            stack.callback(replica.stop)  # on any failure below too
            replicas.append(replica)
        # The adapters are made while the replicas start (vLLM's start-up is mostly imports).
        by_home = adapter_names_by_home([r.url for r in replicas])
        home = link_models(work / "home", shared_models_dir)
        from adapters_store import BaseRegistry, Store

        store = Store(home / "store", BaseRegistry(home / "models"))
        names = sorted(n for names in by_home.values() for n in names)
        for seed, name in enumerate(names):
            source = make_peft_adapter(default_model, work / "sources" / name, seed, r=8)
            store.publish(source, name, card={"method": "lora"})
        store.close()
        swap = make_peft_adapter(default_model, work / "sources" / "swap", len(names), r=8)
        wait_ready(replicas)
        replicas_ready = time.monotonic() - began
        env = {
            "TUNEGATE_DEFAULT_BASE": default_model.id,
            "TUNEGATE_GATEWAY_REPLICAS_URLS": ",".join(r.url for r in replicas),
            "TUNEGATE_GATEWAY_ENGINE_MAX_LORAS": str(MAX_LORAS),
            "TUNEGATE_GATEWAY_ENGINE_MAX_CPU_LORAS": str(MAX_CPU_LORAS),
            "TUNEGATE_GATEWAY_ENGINE_MAX_LORA_RANK": str(MAX_LORA_RANK),
        }
        gateway_began = time.monotonic()
        gateway = stack.enter_context(launch_gateway(home, default_model, env))
        timings = {
            **{f"replica {r.url} ready after s": round(r.ready_after_s or 0, 1) for r in replicas},
            "both replicas (and 5 adapters made) s": round(replicas_ready, 1),
            "gateway ready after s": round(time.monotonic() - gateway_began, 1),
        }
        print(f"\nreplica fleet start-up: {timings}")
        home_of = {name: url for url, names in by_home.items() for name in names}
        yield Fleet(replicas, gateway, home_of, default_model, home, env, swap, timings)


# -- observing the fleet -------------------------------------------------------------------


@dataclass
class FleetView:
    """The gateway's per-replica and per-(replica, adapter) series at one scrape."""

    requests: dict[tuple[str, str], int]  # (replica, adapter) -> requests routed there
    spilled: dict[tuple[str, str], int]  # of them, placed past the adapter's homes
    in_flight: dict[str, int]
    healthy: dict[str, int]

    def __str__(self) -> str:
        return (
            f"requests={self.requests} spilled={self.spilled} "
            f"in_flight={self.in_flight} healthy={self.healthy}"
        )


def scrape(gateway: RunningGateway) -> FleetView:
    text = httpx.get(gateway.url + "/metrics", timeout=30).text
    view = FleetView({}, {}, {}, {})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            replica = sample.labels.get(REPLICA_LABEL)
            if replica is None:
                continue
            value = int(sample.value)
            if sample.name == "tunegate_replica_adapter_requests_total":
                view.requests[(replica, sample.labels[ARTIFACT_LABEL])] = value
            elif sample.name == "tunegate_replica_adapter_spilled_total":
                view.spilled[(replica, sample.labels[ARTIFACT_LABEL])] = value
            elif sample.name == "tunegate_replica_in_flight":
                view.in_flight[replica] = value
            elif sample.name == "tunegate_replica_healthy":
                view.healthy[replica] = value
    return view


@dataclass
class Outcome:
    model: str
    status: int  # 0: no HTTP answer at all
    artifact: str | None = None  # x-tunegate-artifact of a 200
    error: Any = None  # the body of an error answer, or the exception


async def ask(
    client: openai.AsyncOpenAI, model: str, max_tokens: int = 4, *, long: bool = False
) -> Outcome:
    """One chat request; `long` keeps it generating for all max_tokens (in flight a while)."""
    extra = {"ignore_eos": True} if long else {}
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=USER, max_tokens=max_tokens, temperature=0.0, extra_body=extra
        )
    except openai.APIStatusError as exc:
        try:
            body: Any = exc.response.json()
        except ValueError:
            body = exc.response.text[:300]
        return Outcome(model, exc.status_code, error=body)
    except openai.APIError as exc:
        return Outcome(model, 0, error=repr(exc))
    raw.parse()
    return Outcome(model, raw.status_code, artifact=raw.headers.get("x-tunegate-artifact"))


def client_for(gateway: RunningGateway) -> openai.AsyncOpenAI:
    # No client retries: every failure the gateway answers must be counted.
    return openai.AsyncOpenAI(base_url=gateway.v1, api_key="unused", max_retries=0, timeout=300)


async def run_all(gateway: RunningGateway, models: Sequence[str], **kwargs: Any) -> list[Outcome]:
    async with client_for(gateway) as client:
        return list(await asyncio.gather(*(ask(client, m, **kwargs) for m in models)))


def versioned(name: str, version: int = 1) -> str:
    return f"{name}@{version}"  # a store reference, and the name the gateway routes on


def assert_all_served(fleet: Fleet, outcomes: Sequence[Outcome], what: str) -> None:
    bad = [o for o in outcomes if o.status != 200]
    assert not bad, fleet.diagnosis(f"{what}: {len(bad)} of {len(outcomes)} failed: {bad}")


# -- tests ---------------------------------------------------------------------------------


class EndedEarly(Exception):
    """The long requests were all answered before they were seen in flight together (a fast
    machine): the caller tries again with longer ones; never a failure by itself."""


def affinity_problems(fleet: Fleet, view: FleetView, sent: dict[str, int]) -> list[str]:
    """Each (replica, adapter) pair's requests are on a home of the adapter unless every one
    of them spilled there, and each adapter was routed exactly as often as it was sent (a
    healthy fleet places each request once)."""
    problems = []
    for (url, adapter), count in view.requests.items():
        spilled = view.spilled.get((url, adapter), 0)
        is_home = fleet.home_replica(adapter) == url
        if (is_home and spilled) or (not is_home and spilled != count):
            problems.append(
                f"{adapter} on {url} (its home: {is_home}): {count} req, {spilled} spilled"
            )
    for adapter, count in sent.items():
        routed = sum(c for (_, a), c in view.requests.items() if a == adapter)
        if routed != count:
            problems.append(f"{adapter}: {routed} requests routed, {count} sent")
    return problems


def test_each_adapter_is_served_by_its_home_replica_unless_spilled(fleet: Fleet) -> None:
    gateway = fleet.gateway
    seen = scrape(gateway)
    assert set(seen.healthy) == {r.url for r in fleet.replicas}, fleet.diagnosis(
        f"the gateway's replicas are not the two started here: {seen.healthy}"
    )
    # One at a time nothing is ever over capacity: each request goes to its adapter's home.
    sequential = [
        o for m in [*fleet.adapters, fleet.model.id] for o in asyncio.run(run_all(gateway, [m]))
    ]
    assert_all_served(fleet, sequential, "sequential requests")
    view = scrape(gateway)
    expected = {(fleet.home_replica(a), a): 1 for a in fleet.adapters}
    assert view.requests == expected and not any(view.spilled.values()), fleet.diagnosis(
        f"one request at a time, each adapter must be served by its home: {expected}"
    )

    # Concurrent and mixed: a home holding more than its share spills to the other replica.
    mixed = [*fleet.adapters * 2, fleet.model.id]
    outcomes = asyncio.run(run_all(gateway, mixed))
    assert_all_served(fleet, outcomes, "the concurrent mixed workload")
    assert [o.artifact for o in outcomes] == [*fleet.adapters * 2, fleet.model.id], fleet.diagnosis(
        f"answers came from other artifacts than asked: {outcomes}"
    )
    view = scrape(gateway)
    problems = affinity_problems(fleet, view, {a: 3 for a in fleet.adapters})
    assert not problems, fleet.diagnosis("affinity broken:", *problems)

    # What the replicas themselves hold: their homes, and only adapters spilled to them besides.
    for replica in fleet.replicas:
        held = replica.loaded_adapters()
        homed = {a for a in fleet.adapters if fleet.home_replica(a) == replica.url}
        spilled_here = {a for (url, a), n in view.spilled.items() if url == replica.url and n}
        assert homed <= held <= homed | spilled_here, fleet.diagnosis(
            f"replica {replica.url} holds {sorted(held)}; its homes are {sorted(homed)} and "
            f"only {sorted(spilled_here)} spilled to it"
        )


def test_a_second_gateway_on_the_same_store_routes_alike_and_sees_publishes(
    fleet: Fleet, shared_models_dir: Path
) -> None:
    # Its own home (accounting, log), the first gateway's store folder (catalog and blobs).
    home = link_models(fleet.home.parent / "home-2", shared_models_dir)
    (home / "store").symlink_to(fleet.home / "store", target_is_directory=True)
    began = time.monotonic()
    with launch_gateway(home, fleet.model, fleet.gateway_env) as second:
        fleet.timings["second gateway ready after s"] = round(time.monotonic() - began, 1)

        def diagnosis(*facts: object) -> str:
            return fleet.diagnosis(*facts, f"--- second gateway log tail:\n{second.log_tail(40)}")

        # Same replicas, same ring: the second gateway sends each adapter to the same home.
        outcomes = asyncio.run(run_all(second, fleet.adapters))
        assert_all_served(fleet, outcomes, f"the second gateway's requests\n{second.log_tail()}")
        view = scrape(second)
        problems = affinity_problems(fleet, view, {a: 1 for a in fleet.adapters})
        assert not problems, diagnosis("the second gateway's affinity:", view, *problems)

        # Hot swap across gateways: one publish, and both serve the new version by name.
        name = fleet.adapters[0].split("@")[0]
        store = fleet.gateway.store()
        published_at = time.monotonic()
        version = store.publish(fleet.swap_source, name, card={"method": "lora"}).version
        generation = store.generation()
        store.close()
        for gateway in (fleet.gateway, second):
            gateway.wait_for_store_generation(generation)  # a deadline, not a latency check
        seen_after = time.monotonic() - published_at
        fleet.timings["publish seen by both gateways after s"] = round(seen_after, 2)
        swapped = asyncio.run(_one_each([fleet.gateway, second], name))
        assert [(o.status, o.artifact) for o in swapped] == [(200, f"{name}@{version}")] * 2, (
            diagnosis(f"after publishing {name}@{version}: {swapped}")
        )
    print(f"\nreplica fleet timings: {fleet.timings}")


async def _one_each(gateways: Sequence[RunningGateway], model: str) -> list[Outcome]:
    """One request to each gateway, at the same time."""
    results = await asyncio.gather(*(run_all(g, [model]) for g in gateways))
    return [outcomes[0] for outcomes in results]


def test_killing_a_replica_fails_only_what_it_held(fleet: Fleet) -> None:
    asyncio.run(_kill_under_load(fleet, *fleet.replicas))


async def _kill_under_load(fleet: Fleet, victim: Replica, survivor: Replica) -> None:
    gateway = fleet.gateway
    async with client_for(gateway) as client:
        # Long generations on every adapter, so both replicas hold some when the victim dies;
        # longer ones where the machine answered them before they were all seen in flight.
        for max_tokens in (16, 64, 256):
            first = [
                asyncio.create_task(ask(client, a, max_tokens=max_tokens, long=True))
                for a in fleet.adapters
            ]
            try:
                held, polls = await _until_settled(fleet, victim, first)
                break
            except EndedEarly:
                ended = await asyncio.gather(*first)
                assert_all_served(fleet, ended, "long requests before any kill")
        else:
            raise AssertionError(fleet.diagnosis("the long requests never stayed in flight"))
        victim.kill()
        # Right after the kill, mostly before the health loop (1 s) has noticed: a refused
        # connection must move a request to the survivor, never fail it.
        second = [asyncio.create_task(ask(client, a)) for a in fleet.adapters]
        first_outcomes = await asyncio.gather(*first)
        second_outcomes = await asyncio.gather(*second)

    facts = (
        f"victim {victim.url} held {held} of {len(first)} at the kill; polls {polls[-5:]}\n"
        f"first wave: {first_outcomes}\nsecond wave (after the kill): {second_outcomes}"
    )
    failed = [o for o in first_outcomes if o.status != 200]
    assert len(failed) <= held, fleet.diagnosis(f"more failures than the victim held:\n{facts}")
    for outcome in failed:
        error = outcome.error.get("error") if isinstance(outcome.error, dict) else None
        assert outcome.status in (502, 503) and isinstance(error, dict), fleet.diagnosis(
            f"a failure is not an OpenAI-shaped 502/503: {outcome}\n{facts}"
        )
        assert {"message", "type", "param", "code"} <= set(error), fleet.diagnosis(facts)
    assert_all_served(fleet, second_outcomes, f"requests sent after the kill\n{facts}")

    # Once the health loop took the victim out, everything goes to the survivor.
    deadline = time.monotonic() + 60
    while scrape(gateway).healthy.get(victim.url) != 0:
        assert time.monotonic() < deadline, fleet.diagnosis(f"victim never marked down\n{facts}")
        await asyncio.sleep(0.2)
    before = scrape(gateway)
    third = await run_all(gateway, fleet.adapters)
    assert_all_served(fleet, third, f"requests once the victim was out\n{facts}")
    after = scrape(gateway)
    moved = {
        key: count - before.requests.get(key, 0)
        for key, count in after.requests.items()
        if count != before.requests.get(key, 0)
    }
    expected = {(survivor.url, a): 1 for a in fleet.adapters}
    assert moved == expected, fleet.diagnosis(
        f"after the victim was out, requests went to {moved}, expected {expected}\n{facts}"
    )
    assert gateway.health()["status"] == "ok", fleet.diagnosis(gateway.health())


async def _until_settled(
    fleet: Fleet, victim: Replica, tasks: Sequence[asyncio.Task[Outcome]]
) -> tuple[int, list[tuple[float, dict[str, int]]]]:
    """Until every task is generating on a replica and the victim holds some, seen twice the
    same 0.3 s apart (so none is between its /tokenize and its generation); returns what the
    victim holds then. Polled with an async client: a blocking call would starve the tasks."""
    started = time.monotonic()
    polls: list[tuple[float, dict[str, int]]] = []
    async with httpx.AsyncClient(timeout=30) as http:
        while True:
            text = (await http.get(fleet.gateway.url + "/metrics")).text
            in_flight = {
                s.labels[REPLICA_LABEL]: int(s.value)
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "tunegate_replica_in_flight"
            }
            polls.append((round(time.monotonic() - started, 2), in_flight))
            settled = sum(in_flight.values()) == len(tasks) and in_flight.get(victim.url, 0) > 0
            if settled and len(polls) > 1 and polls[-2][1] == in_flight:
                return in_flight[victim.url], polls
            ended = [t.result() for t in tasks if t.done()]
            if any(o.status != 200 for o in ended):
                raise AssertionError(fleet.diagnosis(f"a request failed before the kill: {ended}"))
            if ended:
                raise EndedEarly(f"{len(ended)} ended; polls {polls[-5:]}")
            if time.monotonic() - started > 120:
                raise AssertionError(
                    fleet.diagnosis(f"not all {len(tasks)} in flight in 120 s: {polls[-10:]}")
                )
            await asyncio.sleep(0.3 if settled else 0.05)
