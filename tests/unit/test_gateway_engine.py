"""`gateway.engine.Engine.load_adapter` against a stand-in for vLLM's AsyncLLM."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.config import EngineConfig
from gateway.engine import Adapter, AdapterLoadFailedError, Engine, EngineSpec


class _FakeLLM:
    """Counts add_lora calls; adapter paths named `broken*` fail to load."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def add_lora(self, request: Any) -> bool:
        self.calls.append(request.lora_int_id)
        if Path(request.lora_path).name.startswith("broken"):
            raise ValueError("bad safetensors header")
        return True


def _engine(tmp_path: Path) -> tuple[Engine, _FakeLLM]:
    engine = Engine(EngineSpec("base", tmp_path, enable_lora=True), EngineConfig())
    fake = _FakeLLM()
    engine._llm = fake  # type: ignore[assignment]
    return engine, fake


def test_an_adapter_is_loaded_once_per_version(tmp_path: Path) -> None:
    engine, fake = _engine(tmp_path)
    v1 = Adapter(name="a@1", uid=7, path=tmp_path / "a1")
    v2 = Adapter(name="a@2", uid=8, path=tmp_path / "a2")

    async def run() -> None:
        for adapter in (v1, v1, v2, v1, v2):
            await engine.load_adapter(adapter)

    asyncio.run(run())
    # The utility call waits for the engine's step: once per version, not per request.
    assert fake.calls == [7, 8]


def test_a_failed_load_fails_every_request_naming_it(tmp_path: Path) -> None:
    engine, fake = _engine(tmp_path)
    broken = Adapter(name="b@1", uid=3, path=tmp_path / "broken")

    async def run() -> None:
        for _ in range(2):
            with pytest.raises(AdapterLoadFailedError):
                await engine.load_adapter(broken)

    asyncio.run(run())
    assert fake.calls == [3, 3]  # never remembered as loaded: each request checks again
