"""The load generator: sends one strategy's requests under a closed- or open-loop shape.

Every request becomes a `RequestRecord`, errors included (by HTTP status and OpenAI error
type), so the summary can never hide a failure. Streaming requests time the first content
token (TTFT), the gaps between content chunks (ITL) and the whole request (E2E).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from loadtests.prompts import Prompt, answers_match
from loadtests.scenario import Scenario, Strategy

__all__ = ["RequestRecord", "run_strategy"]


@dataclass
class RequestRecord:
    strategy: str
    index: int
    warmup: bool
    start_s: float  # since the strategy's phase began
    status: int | None = None  # HTTP status; None when no response came
    error_type: str | None = None
    error: str | None = None
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    text: str = ""
    finish_reason: str | None = None
    expected: str | None = None
    correct: bool | None = None
    request_id: str | None = None
    artifact: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None

    @property
    def tpot_ms(self) -> float | None:
        """Time per output token after the first (vLLM's benchmark definition)."""
        if self.ttft_ms is None or self.e2e_ms is None or not self.completion_tokens:
            return None
        if self.completion_tokens < 2:
            return None
        return (self.e2e_ms - self.ttft_ms) / (self.completion_tokens - 1)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["tpot_ms"] = self.tpot_ms
        out["ok"] = self.ok
        return out


async def run_strategy(
    client: httpx.AsyncClient,
    scenario: Scenario,
    strategy: Strategy,
    prompts: list[Prompt],
    on_done: Callable[[RequestRecord], None] | None = None,
) -> tuple[list[RequestRecord], float]:
    """Run warm-up then the measured requests; returns the records and the measured phase's
    wall time in seconds (from its first request's start to its last request's end)."""
    shape = scenario.shape
    records: list[RequestRecord] = []

    def prompt_for(i: int) -> Prompt:
        return prompts[i % len(prompts)]

    # Warm-up: the same requests, concurrently, so caches and compilation are paid for
    # before anything is measured; they are kept (marked) but never summarised.
    if scenario.warmup:
        warm = [
            _one(client, scenario, strategy, prompt_for(i), i, True, time.perf_counter())
            for i in range(scenario.warmup)
        ]
        records += await asyncio.gather(*warm)

    started = time.perf_counter()
    deadline = started + scenario.duration_s
    measured: list[RequestRecord] = []

    def finish(rec: RequestRecord) -> None:
        measured.append(rec)
        if on_done:
            on_done(rec)

    if shape.kind == "closed":
        counter = iter(range(scenario.requests))

        async def worker() -> None:
            for i in counter:
                if time.perf_counter() >= deadline:
                    return
                finish(
                    await _one(
                        client,
                        scenario,
                        strategy,
                        prompt_for(scenario.warmup + i),
                        i,
                        False,
                        started,
                    )
                )

        await asyncio.gather(*(worker() for _ in range(min(shape.concurrency, scenario.requests))))
    else:
        rng = random.Random(scenario.seed)
        gate = asyncio.Semaphore(shape.max_in_flight)
        tasks: list[asyncio.Task[None]] = []

        async def fire(i: int) -> None:
            async with gate:
                finish(
                    await _one(
                        client,
                        scenario,
                        strategy,
                        prompt_for(scenario.warmup + i),
                        i,
                        False,
                        started,
                    )
                )

        next_at = started
        for i in range(scenario.requests):
            next_at += rng.expovariate(shape.rate)
            if next_at >= deadline:
                break
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            tasks.append(asyncio.create_task(fire(i)))
        await asyncio.gather(*tasks)

    ended = max((r.start_s + (r.e2e_ms or 0.0) / 1000 for r in measured), default=0.0)
    measured.sort(key=lambda r: r.index)
    return records + measured, ended


def _body(scenario: Scenario, strategy: Strategy, prompt: Prompt) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": strategy.model,
        "messages": prompt.messages,
        "max_tokens": scenario.max_tokens,
        "temperature": scenario.temperature,
        "stream": scenario.stream,
    }
    if scenario.stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def _one(
    client: httpx.AsyncClient,
    scenario: Scenario,
    strategy: Strategy,
    prompt: Prompt,
    index: int,
    warmup: bool,
    phase_start: float,
) -> RequestRecord:
    t0 = time.perf_counter()
    rec = RequestRecord(strategy.name, index, warmup, t0 - phase_start, expected=prompt.expected)
    body = _body(scenario, strategy, prompt)
    try:
        if scenario.stream:
            await _streamed(client, body, rec, t0)
        else:
            await _plain(client, body, rec, t0)
    except SSEError as exc:
        # A 2xx that is not an event stream, or a malformed one: the server's fault.
        rec.error_type, rec.error = "invalid_stream", str(exc)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        rec.error_type, rec.error = "invalid_response", f"{type(exc).__name__}: {exc}"
    except httpx.TimeoutException as exc:
        rec.error_type, rec.error = "timeout", str(exc) or type(exc).__name__
    except httpx.HTTPError as exc:
        rec.error_type, rec.error = "connection_error", str(exc) or type(exc).__name__
    rec.e2e_ms = (time.perf_counter() - t0) * 1000
    if rec.ok and rec.expected is not None:
        rec.correct = answers_match(rec.text, rec.expected)
    return rec


def _take_headers(rec: RequestRecord, response: httpx.Response) -> None:
    rec.status = response.status_code
    rec.request_id = response.headers.get("x-request-id")
    rec.artifact = response.headers.get("x-tunegate-artifact")


def _http_error(rec: RequestRecord, response: httpx.Response, text: str) -> None:
    """Classify a non-2xx answer by the OpenAI error body when there is one."""
    try:
        error = json.loads(text)["error"]
        rec.error_type = str(error.get("type") or f"http_{response.status_code}")
        rec.error = str(error.get("message", ""))[:500]
    except (ValueError, KeyError, TypeError, AttributeError):
        rec.error_type, rec.error = f"http_{response.status_code}", text[:500]


def _usage(rec: RequestRecord, usage: dict[str, Any] | None) -> None:
    if usage:
        rec.prompt_tokens = usage.get("prompt_tokens")
        rec.completion_tokens = usage.get("completion_tokens")


async def _plain(
    client: httpx.AsyncClient, body: dict[str, Any], rec: RequestRecord, t0: float
) -> None:
    response = await client.post("/v1/chat/completions", json=body)
    _take_headers(rec, response)
    if response.status_code >= 400:
        _http_error(rec, response, response.text)
        return
    data = response.json()
    rec.ttft_ms = (time.perf_counter() - t0) * 1000
    choice = data["choices"][0]
    rec.text = choice["message"].get("content") or ""
    rec.finish_reason = choice.get("finish_reason")
    _usage(rec, data.get("usage"))


async def _streamed(
    client: httpx.AsyncClient, body: dict[str, Any], rec: RequestRecord, t0: float
) -> None:
    parts: list[str] = []
    last: float | None = None
    async with aconnect_sse(client, "POST", "/v1/chat/completions", json=body) as source:
        response = source.response
        _take_headers(rec, response)
        if response.status_code >= 400:
            _http_error(rec, response, (await response.aread()).decode(errors="replace"))
            return
        async for event in source.aiter_sse():
            if event.data == "[DONE]":
                break
            chunk = json.loads(event.data)
            if "error" in chunk:
                # The server failed after the stream started: it says so in-band.
                err = chunk["error"]
                rec.error_type = str(err.get("type") or "stream_error")
                rec.error = str(err.get("message", ""))[:500]
                continue
            _usage(rec, chunk.get("usage"))
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    now = time.perf_counter()
                    if last is None:
                        rec.ttft_ms = (now - t0) * 1000
                    else:
                        rec.itl_ms.append((now - last) * 1000)
                    last = now
                    parts.append(content)
                if choice.get("finish_reason"):
                    rec.finish_reason = choice["finish_reason"]
    rec.text = "".join(parts)
    if rec.ok and rec.finish_reason is None:
        rec.error_type, rec.error = "incomplete_stream", "stream ended without finish_reason"
