"""When vLLM's engine process dies, the gateway must not hang: the request in flight gets a
clean 503, new requests are refused, and `tunegate serve` exits non-zero so that a
supervisor restarts it. Its own gateway process (this test kills its engine)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from adapters_store.bases import BaseModel
from tests.integration.conftest import TINY, EndedBeforeSeen, launch_gateway, link_models

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def _engine_processes(pid: int) -> list[psutil.Process]:
    """vLLM names its engine process `VLLM::EngineCore` (setproctitle)."""
    children = psutil.Process(pid).children(recursive=True)
    return [p for p in children if "EngineCore" in " ".join([p.name(), *p.cmdline()])]


def test_engine_death_fails_requests_cleanly_and_exits_non_zero(
    tmp_path: Path, shared_models_dir: Path, tiny_model: BaseModel
) -> None:
    home = link_models(tmp_path / "home", shared_models_dir)
    with launch_gateway(home, tiny_model) as gw:
        gw.expected_exit = 1  # what `tunegate serve` returns on a fatal error
        engines = _engine_processes(gw.process.pid)
        assert engines, "found no vLLM engine process under the gateway"

        async def scenario() -> tuple[httpx.Response, list[int]]:
            async with httpx.AsyncClient(base_url=gw.v1, timeout=120) as client:
                body = {
                    "model": TINY,
                    "messages": [{"role": "user", "content": "Tell a long story."}],
                    "max_tokens": 400,
                    "ignore_eos": True,  # stays in the engine until it is killed
                }
                in_flight = await _in_the_engine(client, body)
                for p in engines:
                    os.kill(p.pid, signal.SIGKILL)
                response = await in_flight
                # Until the process is gone, everything is refused with 503 (or the
                # listener is already closed).
                seen: list[int] = []
                deadline = time.monotonic() + 60
                while gw.process.poll() is None and time.monotonic() < deadline:
                    with contextlib.suppress(httpx.TransportError):
                        seen.append((await client.post("/chat/completions", json=body)).status_code)
                        seen.append((await client.get(gw.url + "/health", timeout=5)).status_code)
                    await asyncio.sleep(0.05)
                return response, seen

        async def _in_the_engine(
            client: httpx.AsyncClient, body: dict[str, object]
        ) -> asyncio.Task[httpx.Response]:
            """A request that the engine holds now (one answered in full between two polls
            is tried again)."""
            tries: list[str] = []
            for _ in range(3):
                in_flight = asyncio.create_task(client.post("/chat/completions", json=body))
                try:
                    await gw.until_in_engine([in_flight], at_least=1, timeout_s=60)
                    return in_flight
                except EndedBeforeSeen as ended:
                    tries.append(str(ended))
            raise AssertionError(f"no try was seen inside the engine: {tries}")

        response, seen = asyncio.run(scenario())
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "engine_unavailable"
        assert int(response.headers["retry-after"]) >= 1
        assert set(seen) <= {503}, seen
        assert gw.process.wait(timeout=120) == 1, gw.log_tail()
        assert "died" in gw.log_tail(200)
