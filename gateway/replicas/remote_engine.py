"""An `Engine` whose vLLM runs elsewhere: N OpenAI-server replicas behind a `ReplicaFleet`.

The gateway's serving flow (admission, auth, accounting, telemetry, capture) talks to an
`Engine` through a few calls: render the prompt to token ids, generate `Delta`s. This class
makes those calls over HTTP on the replicas, so the flow stays the same for a local engine
and for a fleet:

- `render_chat` / `render_text` call vLLM's `POST /tokenize` (the model's own chat template
  and tokenizer, as the in-process renderer uses) on the least loaded replica;
- `generate` sends the token ids to `POST /v1/completions` (always streamed, with
  `return_token_ids` so every chunk says how many tokens it adds and `include_usage` for the
  prompt and cached token counts) on the replica the router picks for the adapter; closing
  the generator closes the HTTP stream, which makes vLLM abort the request.

Sampling fields the request left unset are left out, so each replica applies the model's
generation config and then OpenAI's defaults, the same order the in-process engine uses.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError

from gateway.config import EngineConfig, GatewayConfig
from gateway.engine import (
    Adapter,
    AdapterLoadFailedError,
    Delta,
    Engine,
    EngineRequestError,
    EngineSpec,
    GenerationParams,
    InvalidPromptError,
)
from gateway.errors import EngineUnavailableError
from gateway.replicas.client import AdapterRefusedError, ReplicaClient, ReplicaDownError
from gateway.replicas.config import ReplicasConfig
from gateway.replicas.fleet import AdapterTarget, ReplicaFleet
from gateway.replicas.policy import NoHealthyReplicaError

__all__ = ["RemoteEngine", "remote_engine"]

log = logging.getLogger("tunegate.gateway.replicas")

_SAMPLING_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed")


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return response.text[:200]
    return str(error.get("message", "")) if isinstance(error, dict) else response.text[:200]


def _unavailable(exc: Exception) -> EngineUnavailableError:
    # A client-facing 503 with Retry-After: other replicas (or this one, back) can serve it.
    return EngineUnavailableError(
        f"the replica serving this request failed ({type(exc).__name__}); retry",
        retry_after_s=1,
    )


def remote_engine(spec: EngineSpec, config: GatewayConfig) -> RemoteEngine:
    """The base engine when `gateway.replicas.urls` is set (replicas serve one base model)."""
    if len(config.engine.bases) > 1:
        raise ValueError(
            "gateway.replicas serve one base model, but gateway.engine.bases lists "
            f"{len(config.engine.bases)}: {config.engine.bases}"
        )
    return RemoteEngine.from_config(spec, config.engine, config.replicas)


class RemoteEngine(Engine):
    """The base model (and its adapters) served by remote vLLM replicas."""

    # With every replica down the gateway stays up (503 with Retry-After) and serves again
    # as soon as the health loop sees a replica back: restarting it would not help.
    fatal_when_unhealthy = False

    def __init__(self, spec: EngineSpec, config: EngineConfig, fleet: ReplicaFleet) -> None:
        super().__init__(spec, config)
        self.fleet = fleet
        self._started = False
        self._closing: asyncio.Task[None] | None = None

    @classmethod
    def from_config(
        cls, spec: EngineSpec, config: EngineConfig, replicas: ReplicasConfig
    ) -> RemoteEngine:
        timeout = httpx.Timeout(300.0, connect=replicas.connect_timeout_s)
        fleet = ReplicaFleet(
            [ReplicaClient(url, timeout=timeout) for url in replicas.urls],
            max_loras=config.max_loras,
            max_cpu_loras=config.max_cpu_loras,
            load_factor=replicas.load_factor,
            home_count=replicas.home_count,
            health_interval_s=replicas.health_interval_s,
        )
        return cls(spec, config, fleet)

    async def start(self) -> None:
        await self.fleet.start()
        if not self.fleet.router.healthy():
            await self.fleet.aclose()
            raise RuntimeError(
                f"no replica of {self.model_id} answers /health: " + ", ".join(self.fleet.clients)
            )
        # The replicas' context length bounds what the gateway admits (checked before them).
        answer = await self._tokenize({"prompt": ""})
        self.max_model_len = min(self.config.max_model_len, int(answer["max_model_len"]))
        self._started = True

    def shutdown(self) -> None:
        # Engine.shutdown is synchronous (the gateway calls it from its async lifespan):
        # close the fleet's health loop and connections on the running loop.
        self._started = False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop left: nothing of the fleet is running either
        self._closing = loop.create_task(self.fleet.aclose())

    async def aclose(self) -> None:
        """Stop health polling and close the connections (the async `shutdown`)."""
        self._started = False
        await self.fleet.aclose()

    def running(self) -> int:
        return sum(state.in_flight for state in self.fleet.router.replicas.values())

    @property
    def healthy(self) -> bool:
        # One live replica is enough to serve.
        return self._started and bool(self.fleet.router.healthy())

    # -- prompts ---------------------------------------------------------------------------

    async def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        answer = await self._tokenize({"messages": messages, "add_generation_prompt": True})
        return list(answer["tokens"])

    async def render_text(self, prompt: str | list[int]) -> list[int]:
        if not isinstance(prompt, str):
            return list(prompt)  # the replica checks them against its vocabulary
        answer = await self._tokenize({"prompt": prompt, "add_special_tokens": True})
        return list(answer["tokens"])

    async def _tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self.fleet.post("/tokenize", {"model": self.model_id, **body}, None)
        except (ReplicaDownError, NoHealthyReplicaError) as exc:
            raise _unavailable(exc) from exc
        if response.status_code == 400:
            raise InvalidPromptError(_message(response))
        if response.status_code != 200:
            raise RuntimeError(f"/tokenize answered {response.status_code}: {_message(response)}")
        answer: dict[str, Any] = response.json()
        return answer

    # -- generation ------------------------------------------------------------------------

    async def load_adapter(self, adapter: Adapter) -> None:
        """Nothing to do yet: which replica loads it is only known once it is routed."""

    def _body(self, prompt: list[int], params: GenerationParams, request_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": params.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
            "request_id": request_id,
        }
        for name in _SAMPLING_FIELDS:
            value = getattr(params, name)
            if value is not None:
                body[name] = value
        if params.stop:
            body["stop"] = list(params.stop)
        if params.ignore_eos:
            body["ignore_eos"] = True
        if params.min_tokens:
            body["min_tokens"] = params.min_tokens
        return body

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: GenerationParams,
        request_id: str,
        adapter: Adapter | None,
    ) -> AsyncIterator[Delta]:
        body = self._body(prompt_token_ids, params, request_id)
        target = None
        if adapter is not None:
            body["model"] = adapter.name
            target = AdapterTarget(name=adapter.name, path=str(adapter.path))
        else:
            body["model"] = self.model_id
        text, tokens, finish = "", 0, None
        try:
            async with self.fleet.stream("/v1/completions", body, target) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self._refused(response, adapter)
                async for event in EventSource(response).aiter_sse():
                    if event.data == "[DONE]":
                        break
                    chunk = json.loads(event.data)
                    if "error" in chunk:
                        raise RuntimeError(f"replica error: {chunk['error']}")
                    usage = chunk.get("usage")
                    if usage:
                        details = usage.get("prompt_tokens_details") or {}
                        yield Delta(
                            text="" if params.stream else text,
                            num_tokens=0 if params.stream else tokens,
                            finished=True,
                            finish_reason=finish,
                            prompt_tokens=usage.get("prompt_tokens"),
                            cached_tokens=details.get("cached_tokens"),
                            queue_ms=None,
                        )
                        return
                    for choice in chunk.get("choices", []):
                        piece = choice.get("text") or ""
                        count = len(choice.get("token_ids") or [])
                        finish = choice.get("finish_reason") or finish
                        if params.stream and (piece or count):
                            yield Delta(
                                text=piece,
                                num_tokens=count,
                                finished=False,
                                finish_reason=None,
                                prompt_tokens=None,
                                cached_tokens=None,
                                queue_ms=None,
                            )
                        text += piece
                        tokens += count
        except AdapterRefusedError as exc:
            raise AdapterLoadFailedError(adapter.name if adapter else self.model_id) from exc
        except (ReplicaDownError, NoHealthyReplicaError, httpx.TransportError, SSEError) as exc:
            log.warning("request %s lost its replica: %s", request_id, exc)
            raise _unavailable(exc) from exc
        raise _unavailable(RuntimeError("the replica ended the stream without usage"))

    def _refused(self, response: httpx.Response, adapter: Adapter | None) -> Exception:
        message = _message(response)
        if response.status_code == 404 and adapter is not None:
            return AdapterLoadFailedError(adapter.name)
        if 400 <= response.status_code < 500:
            return EngineRequestError(message)
        return RuntimeError(f"replica answered {response.status_code}: {message}")
