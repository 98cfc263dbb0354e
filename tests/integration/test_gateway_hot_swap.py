"""Publishing a new adapter version (and moving an alias) while requests run: the next
request is served by the new version, with no restart and no failed in-flight request."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import openai
import pytest

from tests.integration.conftest import EndedBeforeSeen

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import AdapterMaker, RunningGateway

pytestmark = [pytest.mark.engine, pytest.mark.slow]

USER = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


async def _ask(client: openai.AsyncOpenAI, model: str, max_tokens: int, stream: bool) -> str:
    """The artifact that served the request; raises if the request failed in any way.

    `ignore_eos`: the random tiny model may end its answer at any token, and a request must
    stay in the engine for its whole max_tokens to be "in flight" when the publish lands."""
    fixed = {"ignore_eos": True}
    if not stream:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=USER, max_tokens=max_tokens, temperature=0.0, extra_body=fixed
        )
        reply = raw.parse()
        assert reply.choices[0].finish_reason in ("length", "stop")
        return raw.headers["x-tunegate-artifact"]
    async with client.chat.completions.with_streaming_response.create(
        model=model,
        messages=USER,
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
        extra_body=fixed,
    ) as response:
        reasons = [
            chunk.choices[0].finish_reason
            async for chunk in await response.parse()
            if chunk.choices and chunk.choices[0].finish_reason
        ]
        assert reasons and reasons[-1] in ("length", "stop")
        return response.headers["x-tunegate-artifact"]


def test_publish_while_requests_run(
    gateway: RunningGateway, make_adapter: AdapterMaker, tmp_path: Path
) -> None:
    store = gateway.store()
    first = make_adapter(tmp_path / "v1", seed=11)
    store.publish(first, "swap", card={"method": "lora"})
    gateway.wait_for_store_generation(store.generation())
    second = make_adapter(tmp_path / "v2", seed=12)

    async def scenario() -> tuple[list[str], str, str]:
        async with openai.AsyncOpenAI(base_url=gateway.v1, api_key="x", max_retries=0) as c:
            tries: list[str] = []
            for _ in range(3):
                in_flight = [
                    asyncio.create_task(_ask(c, "swap", max_tokens=400, stream=i % 2 == 0))
                    for i in range(6)
                ]
                # Let them reach the engine before the new version lands.
                try:
                    await gateway.until_in_engine(in_flight, at_least=3)
                    break
                except EndedBeforeSeen as ended:
                    tries.append(str(ended))
                    await asyncio.gather(*in_flight)
            else:
                raise AssertionError(f"no try had 3 requests in the engine together: {tries}")
            published = await asyncio.to_thread(store.publish, second, "swap")
            await asyncio.sleep(1.0)  # the promise: served within one second of the publish
            after = await _ask(c, "swap", max_tokens=4, stream=False)
            done = await asyncio.gather(*in_flight)
            return done, after, published.ref

    done, after, new_ref = asyncio.run(scenario())
    assert new_ref == "swap@2"
    assert done == ["swap@1"] * 6  # every in-flight request completed on the old version
    assert after == "swap@2"
    store.close()


def test_alias_move_switches_the_next_request(
    gateway: RunningGateway, make_adapter: AdapterMaker, tmp_path: Path
) -> None:
    store = gateway.store()
    v1 = store.publish(make_adapter(tmp_path / "a1", seed=21), "moving")
    v2 = store.publish(make_adapter(tmp_path / "a2", seed=22), "moving")
    store.set_alias(v1.ref, "prod")
    gateway.wait_for_store_generation(store.generation())
    client = openai.OpenAI(base_url=gateway.v1, api_key="x", max_retries=0)

    def served(model: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=USER, max_tokens=2
        )
        return raw.headers["x-tunegate-artifact"]

    assert served("moving@prod") == v1.ref
    store.set_alias(v2.ref, "prod")
    time.sleep(1.0)
    assert served("moving@prod") == v2.ref
    assert served("moving@1") == v1.ref  # pinned versions stay put
    ids = {m.id for m in client.models.list().data}
    assert {"moving", "moving@1", "moving@2", "moving@prod"} <= ids
    store.close()
