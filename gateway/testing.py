"""A stand-in engine for fast tests of everything above the engine seam.

`FakeEngine` renders and "generates" deterministically without vLLM: one token per word,
the completion names the model or adapter that produced it (`<served> 0 1 2 ...`), and it
honours max_tokens, stop sequences, streaming and cancellation (a cancelled request leaves
`running()`), so protocol, routing, accounting and disconnect handling can be tested with
litestar's TestClient in milliseconds. Use it through `create_app(engine_factory=...)`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.config import EngineConfig
from gateway.engine import (
    Adapter,
    AdapterLoadFailedError,
    Delta,
    Engine,
    EngineSpec,
    GenerationParams,
    InvalidPromptError,
    PromptTooLongError,
)

if TYPE_CHECKING:
    from litestar import Litestar

    from adapters_store.catalog import Store
    from tunegate.config import Settings

__all__ = ["FakeEngine", "GenerateCall", "fake_app", "fake_engine_factory"]

VOCAB = 1000
_BOS, _EOS = 1, 2


@dataclass
class GenerateCall:
    request_id: str
    prompt: list[int]
    params: GenerationParams
    adapter: Adapter | None
    finished: bool = False
    aborted: bool = False


@dataclass
class _Knobs:
    step_s: float = 0.0  # pause between tokens (lets tests disconnect mid-generation)
    fail_after: int | None = None  # raise after this many tokens (a mid-stream failure)
    broken_adapters: set[str] = field(default_factory=set)  # names whose load fails


def _word_id(word: str) -> int:
    return 3 + zlib.crc32(word.encode()) % (VOCAB - 3)


class FakeEngine(Engine):
    def __init__(self, spec: EngineSpec, config: EngineConfig) -> None:
        super().__init__(spec, config)
        self._started = False
        self.calls: list[GenerateCall] = []
        self.knobs = _Knobs()
        self._running: set[str] = set()

    async def start(self) -> None:
        self._started = True

    def shutdown(self) -> None:
        self._started = False

    def running(self) -> int:
        return len(self._running)

    @property
    def healthy(self) -> bool:
        return self._started

    def _check(self, ids: list[int]) -> list[int]:
        if len(ids) > self.max_model_len:
            raise PromptTooLongError(
                f"This model's maximum context length is {self.max_model_len} tokens; "
                f"the prompt has {len(ids)}"
            )
        return ids

    async def load_adapter(self, adapter: Adapter) -> None:
        if adapter.name in self.knobs.broken_adapters:
            raise AdapterLoadFailedError(adapter.name)

    async def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        ids: list[int] = []
        for m in messages:
            if m["role"] not in ("system", "user", "assistant"):
                raise InvalidPromptError(f"unknown role {m['role']!r}")
            ids += [_BOS, _word_id(m["role"])] + [_word_id(w) for w in m["content"].split()]
            ids.append(_EOS)
        return self._check([*ids, _BOS, _word_id("assistant")])

    async def render_text(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self._check([_BOS] + [_word_id(w) for w in prompt.split()])
        if any(not 0 <= t < VOCAB for t in prompt):
            raise InvalidPromptError("Token id out of vocabulary")
        return self._check(list(prompt))

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: GenerationParams,
        request_id: str,
        adapter: Adapter | None,
    ) -> AsyncIterator[Delta]:
        call = GenerateCall(request_id, list(prompt_token_ids), params, adapter)
        self.calls.append(call)
        self._running.add(request_id)
        served = adapter.name if adapter is not None else self.model_id
        words = [served, *(str(i) for i in range(params.max_tokens))][: params.max_tokens]
        text, pending, sent = "", "", 0
        try:
            for i, word in enumerate(words):
                if self.knobs.fail_after is not None and i >= self.knobs.fail_after:
                    raise RuntimeError("fake engine failure")
                if self.knobs.step_s:
                    await asyncio.sleep(self.knobs.step_s)
                piece = word if i == 0 else " " + word
                candidate = text + piece
                stop = next((s for s in params.stop if s in candidate), None)
                last = i == len(words) - 1 or stop is not None
                if stop is not None:
                    piece = candidate[: candidate.index(stop)][len(text) :]
                text += piece
                pending += piece
                sent += 1
                if params.stream or last:
                    yield Delta(
                        text=pending,
                        num_tokens=1 if params.stream else sent,
                        finished=last,
                        finish_reason=("stop" if stop else "length") if last else None,
                        prompt_tokens=len(prompt_token_ids),
                        cached_tokens=0,
                        queue_ms=0.0,
                    )
                    pending = ""
                if last:
                    break
            call.finished = True
        except (asyncio.CancelledError, GeneratorExit):
            call.aborted = True
            raise
        finally:
            self._running.discard(request_id)


def fake_engine_factory(created: dict[str, FakeEngine] | None = None) -> type[FakeEngine]:
    """A factory for `create_app` that also records each engine it makes in `created`."""
    registry = created if created is not None else {}

    class _Recorded(FakeEngine):
        def __init__(self, spec: EngineSpec, config: EngineConfig) -> None:
            super().__init__(spec, config)
            registry[spec.model_id] = self

    return _Recorded


def fake_app(
    settings: Settings, store: Store | None = None
) -> tuple[Litestar, dict[str, FakeEngine]]:
    """The real gateway app over fake engines (and the given store, or none)."""
    from gateway.app import create_app

    engines: dict[str, FakeEngine] = {}
    app = create_app(
        settings,
        engine_factory=fake_engine_factory(engines),
        store=store,
        use_store=store is not None,
    )
    return app, engines
