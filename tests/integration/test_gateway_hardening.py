"""The gateway under hostile input, faults and overload: one real gateway process (tiny
model, real vLLM engine) with API keys, driven over HTTP.

The keys are created with `tunegate keys create` AFTER the gateway started, so every test
here also shows that a running gateway picks up new keys. The last test ends the gateway
with SIGTERM under load; tests after it in this module would find no gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters_store.bases import BaseModel
from adapters_store.testing import write_lora
from gateway.auth import KeyStore
from tests.integration.conftest import TINY, RunningGateway, launch_gateway, link_models

pytestmark = [pytest.mark.engine, pytest.mark.slow]

CAPACITY = 8  # gateway.max_pending: requests admitted at once
USER = [{"role": "user", "content": "Write one sentence about the sea."}]
ERROR_FIELDS = {"message", "type", "param", "code"}


@dataclass
class Hardened:
    gw: RunningGateway
    keys: dict[str, str]  # key name -> the key

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}


def _cli(home: Path, *args: str) -> str:
    env = {**os.environ, "TUNEGATE_HOME": str(home)}
    env.pop("TUNEGATE_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "tunegate", *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _corrupt(path: Path) -> None:
    """Damage a published adapter's weights on disk (as a bad disk or a bad copy would)."""
    weights = path / "adapter_model.safetensors"
    weights.chmod(0o644)
    data = weights.read_bytes()
    weights.write_bytes(b"\xff" * 64 + data[64 : len(data) // 2])


def _openai_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS, response.text
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def hardened(
    tmp_path_factory: pytest.TempPathFactory, shared_models_dir: Path, tiny_model: BaseModel
) -> Iterator[Hardened]:
    home = link_models(tmp_path_factory.mktemp("hardened-home"), shared_models_dir)
    from adapters_store import BaseRegistry, Store

    store = Store(home / "store", BaseRegistry(home / "models"))
    for seed, name in enumerate(("alpha", "beta", "broken"), start=1):
        published = store.publish(write_lora(home / "src" / name, tiny_model, r=8, seed=seed), name)
    _corrupt(published.path)  # `broken` was valid when published, is damaged since
    store.close()
    env = {
        "TUNEGATE_GATEWAY_MAX_PENDING": str(CAPACITY),
        "TUNEGATE_GATEWAY_ENGINE_MAX_NUM_SEQS": str(CAPACITY),
        "TUNEGATE_GATEWAY_AUTH_POLL_S": "0.1",
        "TUNEGATE_GATEWAY_MAX_TOKENS_LIMIT": "256",
    }
    with launch_gateway(home, tiny_model, env) as gw:
        assert httpx.get(gw.v1 + "/models").status_code == 200  # no key yet: open
        # One key through the CLI (the path an operator takes), the rest straight into
        # the same table (a CLI process costs seconds here).
        keys = {"tenant-a": _cli(home, "keys", "create", "tenant-a", "--adapters", "alpha")}
        table = KeyStore(home / "keys.sqlite3")
        keys["admin"] = table.create("admin", ["*"], admin=True)[1]
        keys["tenant-b"] = table.create("tenant-b", ["beta"])[1]
        keys["limited"] = table.create("limited", ["*"], rpm=3)[1]
        keys["drain"] = table.create("drain", ["*"])[1]
        deadline = time.monotonic() + 30
        while httpx.get(gw.v1 + "/models").status_code != 401:  # the new keys are seen
            assert time.monotonic() < deadline, "the gateway never picked up the keys"
            time.sleep(0.1)
        yield Hardened(gw, keys)


def _client(base_url: str, connections: int = 100) -> httpx.AsyncClient:
    # A new connection per request: a pooled keep-alive connection that uvicorn closes
    # (idle timeout) just as the client reuses it fails the request on the client side
    # without the server ever seeing it, which is not what these tests are about.
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=120,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=0),
    )


def _chat(model: str, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER, "max_tokens": max_tokens, **extra}


# ----------------------------------------------------------------------------- tenants


def test_tenant_isolation(hardened: Hardened) -> None:
    v1, a, b = hardened.gw.v1, hardened.auth("tenant-a"), hardened.auth("tenant-b")
    with httpx.Client(base_url=v1, timeout=60) as client:
        assert client.post("/chat/completions", json=_chat("alpha"), headers=a).status_code == 200
        assert client.post("/chat/completions", json=_chat("beta"), headers=b).status_code == 200
        for model in ("beta", "beta@1", "broken"):
            r = client.post("/chat/completions", json=_chat(model), headers=a)
            assert r.status_code == 404 and _openai_error(r)["param"] == "model"
            assert _openai_error(r)["code"] == "model_not_found"
        r = client.post("/completions", json={"model": "beta", "prompt": "x"}, headers=a)
        assert r.status_code == 404
        ids = {m["id"] for m in client.get("/models", headers=a).json()["data"]}
        assert ids == {TINY, "alpha", "alpha@1"}
        assert client.get("/models/beta", headers=a).status_code == 404
        usage = client.get("/usage", headers=a, params={"group_by": "artifact"}).json()["data"]
        assert "beta@1" not in {g["group"] for g in usage} and "alpha@1" in {
            g["group"] for g in usage
        }
        assert client.get("/usage", headers=a, params={"group_by": "key"}).json()["data"][0][
            "group"
        ] == ("tenant-a")
        # No key, a wrong key, a revoked-looking key: 401 in OpenAI's shape; /health is open.
        for headers in ({}, {"Authorization": "Bearer sk-tg-000000000000-nope"}):
            r = client.post("/chat/completions", json=_chat("alpha"), headers=headers)
            assert r.status_code == 401 and _openai_error(r)["type"] == "invalid_request_error"
        assert httpx.get(hardened.gw.url + "/metrics", headers=a).status_code == 403
        assert httpx.get(hardened.gw.url + "/health").status_code == 200


def _burst(hardened: Hardened, key: str, n: int, body: dict[str, Any]) -> list[httpx.Response]:
    """`n` chat requests sent at once."""

    async def run() -> list[httpx.Response]:
        async with _client(hardened.gw.v1, connections=n) as client:
            headers = hardened.auth(key)
            calls = [client.post("/chat/completions", json=body, headers=headers) for _ in range(n)]
            return list(await asyncio.gather(*calls))

    return asyncio.run(run())


def test_requests_per_minute_with_openai_headers(hardened: Hardened) -> None:
    responses = _burst(hardened, "limited", 6, _chat(TINY, max_tokens=2))
    assert sorted(r.status_code for r in responses) == [200] * 3 + [429] * 3
    for r in responses:
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        assert "x-ratelimit-remaining-requests" in r.headers
        assert "x-ratelimit-reset-requests" in r.headers
        if r.status_code == 429:
            assert _openai_error(r)["code"] == "rate_limit_exceeded"
            assert int(r.headers["retry-after"]) >= 1


# ----------------------------------------------------------------------------- schema


def test_schemathesis_no_5xx_and_openai_errors(hardened: Hardened) -> None:
    """Generated requests for every operation of the gateway's own OpenAPI schema. Half of
    the generation requests name a served model so that they reach the engine (random
    names are mostly 404s). Fine-tuning routes are left out: a generated job would start a
    training run; their own tests cover them."""
    spec = httpx.get(hardened.gw.url + "/schema/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec).exclude(path_regex="^/v1/(files|fine_tuning)")
    headers = hardened.auth("admin")
    statuses: dict[int, int] = {}

    @given(case=schema.as_strategy(), model=st.sampled_from([None, TINY, "alpha"]))
    @settings(
        max_examples=80,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same examples every run: a failure replays
        database=None,
    )
    def check(case: Any, model: str | None) -> None:
        if model is not None and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model
        response = case.call(base_url=hardened.gw.url, headers=headers, timeout=120)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        if response.status_code >= 400:
            body = json.loads(response.text)
            assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS, response.text

    check()
    print(
        f"\nschemathesis: {sum(statuses.values())} requests, by status {sorted(statuses.items())}"
    )
    assert statuses.get(200, 0) > 0


# ----------------------------------------------------------------------------- faults


def test_bad_adapter_loads_and_bad_requests_never_fail_good_traffic(hardened: Hardened) -> None:
    headers = hardened.auth("admin")
    broken: list[tuple[str, dict[str, Any] | bytes]] = [
        ("broken", _chat("broken")),  # the adapter's file is damaged on disk
        ("broken", _chat("broken@1", stream=True)),
    ]
    bad: list[tuple[str, dict[str, Any] | bytes]] = [
        ("json", b'{"model": "alpha", "messages": ['),
        ("schema", {"model": "alpha", "messages": [{"role": "tool", "content": "x"}]}),
        ("unknown", _chat("no-such-adapter")),
        ("context", _chat("alpha", max_tokens=100_000)),
    ]
    good = [_chat(TINY), _chat("alpha"), _chat("beta", stream=True)]

    async def one(client: httpx.AsyncClient, body: dict[str, Any] | bytes) -> httpx.Response:
        if isinstance(body, bytes):
            return await client.post(
                "/chat/completions",
                content=body,
                headers={**headers, "content-type": "application/json"},
            )
        return await client.post("/chat/completions", json=body, headers=headers)

    async def run() -> tuple[list[httpx.Response], list[tuple[str, httpx.Response]]]:
        limit = asyncio.Semaphore(CAPACITY - 2)  # stay under capacity: no 503 by design

        async def bounded(body: dict[str, Any] | bytes) -> httpx.Response:
            async with limit:
                return await one(client, body)

        async with _client(hardened.gw.v1) as client:
            good_tasks, bad_tasks = [], []
            for i in range(50):
                kind, body = broken[i % len(broken)]
                bad_tasks.append((kind, asyncio.ensure_future(bounded(body))))
                good_tasks.append(asyncio.ensure_future(bounded(good[i % len(good)])))
                if i % 2:
                    kind, body = bad[i // 2 % len(bad)]
                    bad_tasks.append((kind, asyncio.ensure_future(bounded(body))))
            goods = [await t for t in good_tasks]
            bads = [(kind, await t) for kind, t in bad_tasks]
        return goods, bads

    goods, bads = asyncio.run(run())
    assert [r.status_code for r in goods] == [200] * 50
    for r in goods:
        if r.headers["content-type"].startswith("text/event-stream"):
            assert '"error"' not in r.text and r.text.rstrip().endswith("data: [DONE]")
    expected = {"broken": 500, "json": 400, "schema": 400, "unknown": 404, "context": 400}
    for kind, r in bads:
        assert r.status_code == expected[kind], (kind, r.text)
        error = _openai_error(r)
        if kind == "broken":
            assert error["code"] == "adapter_load_failed" and "broken@1" in error["message"]
    loads = sum(kind == "broken" for kind, _ in bads)
    assert loads == 50
    print(
        f"\nbad adapter loads: {loads}, other bad requests: {len(bads) - loads}, "
        f"good requests: {len(goods)}, good failed: 0"
    )
    assert hardened.gw.health()["status"] == "ok"


def test_overload_burst_of_four_times_capacity(hardened: Hardened) -> None:
    tried = 4 * CAPACITY
    # ignore_eos and the largest allowed max_tokens: admitted requests stay in the engine
    # while the rest of the burst arrives (with 64 tokens, a host with AMX finished the
    # first ones before the last arrived and admitted all 32).
    body = _chat(TINY, max_tokens=256, ignore_eos=True)
    responses = _burst(hardened, "admin", tried, body)
    admitted = [r for r in responses if r.status_code == 200]
    rejected = [r for r in responses if r.status_code != 200]
    print(f"\noverload: tried {tried}, admitted {len(admitted)}, rejected {len(rejected)}")
    assert len(admitted) >= CAPACITY and rejected
    for r in rejected:
        assert r.status_code == 503, r.text  # the admin key has no rate limit
        assert int(r.headers["retry-after"]) >= 1
        assert _openai_error(r)["code"] == "overloaded"
    for r in admitted:
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def _records(path: Path, key: str) -> int:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return int(
            conn.execute("SELECT COUNT(*) FROM requests WHERE key_id = ?", (key,)).fetchone()[0]
        )
    finally:
        conn.close()


def test_sigterm_under_load_loses_nothing(hardened: Hardened) -> None:
    """LAST in this module: it stops the gateway."""
    gw = hardened.gw
    headers = hardened.auth("drain")
    tried = 2 * CAPACITY

    async def load() -> list[httpx.Response | BaseException]:
        async with _client(gw.v1) as client:

            async def one(i: int) -> httpx.Response:
                # Half at once (they fill the engine), half arriving during the shutdown.
                await asyncio.sleep(0 if i < CAPACITY else 0.1 * (i - CAPACITY))
                # ignore_eos: the random model could end early and empty the engine first.
                body = _chat(
                    "alpha" if i % 2 else TINY, max_tokens=96, stream=i % 3 == 0, ignore_eos=True
                )
                response = await client.post("/chat/completions", json=body, headers=headers)
                await response.aread()
                return response

            tasks = [asyncio.ensure_future(one(i)) for i in range(tried)]
            deadline = time.monotonic() + 60
            # SIGTERM while requests are in the engine (not before any arrived).
            while (await client.get(gw.url + "/health")).json()["in_flight"] < CAPACITY // 2:
                assert time.monotonic() < deadline, "the load never reached the engine"
                await asyncio.sleep(0.02)
            gw.process.send_signal(signal.SIGTERM)
            return list(await asyncio.gather(*tasks, return_exceptions=True))

    results = asyncio.run(load())
    assert gw.process.wait(timeout=120) == 0, gw.log_tail()
    answered = [r for r in results if isinstance(r, httpx.Response)]
    unreached = [r for r in results if not isinstance(r, httpx.Response)]
    for failure in unreached:  # came after the listener closed: never admitted nor answered
        assert isinstance(failure, httpx.TransportError), repr(failure)
    completed = [r for r in answered if r.status_code == 200]
    for r in answered:
        if r.status_code != 200:
            assert r.status_code == 503 and _openai_error(r)["code"] == "overloaded"
        elif r.headers["content-type"].startswith("text/event-stream"):
            assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text
    recorded = _records(gw.home / "accounting.sqlite3", "drain")
    print(
        f"\nSIGTERM under load: tried {tried}, completed {len(completed)}, "
        f"refused {len(answered) - len(completed)}, not reached {len(unreached)}, "
        f"accounting records {recorded}, lost {len(answered) - recorded}"
    )
    assert completed
    assert recorded == len(answered)
