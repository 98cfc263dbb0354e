"""What chat and text completions share: admission, routing, the context check, the
request's lifecycle (accounting record, metrics, span) and the two ways of answering (one
JSON body, or an SSE stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar.response import Stream

from adapters_store.profile import normalise_answer
from gateway.accounting import BatchWriter, PriceBook, Status, UsageRecord, UsageSink
from gateway.auth import ApiKey, Auth, caller, visible
from gateway.capture import Capture
from gateway.config import GatewayConfig
from gateway.engine import (
    AdapterLoadFailedError,
    Delta,
    Engine,
    EngineDiedError,
    EngineRequestError,
    GenerationParams,
    InvalidPromptError,
    PromptTooLongError,
)
from gateway.errors import (
    REQUEST_ID_HEADER,
    AdapterLoadError,
    APIError,
    BadRequestError,
    ContextLengthError,
    EngineUnavailableError,
    ModelNotFoundError,
    OverloadedError,
    ServerError,
)
from gateway.protocol import CompletionUsage, PromptTokensDetails
from gateway.routing import ModelRouter, Target, sticky_id
from gateway.telemetry import ARTIFACT, RequestMetrics, Telemetry

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from gateway.capture import Capturer

__all__ = [
    "ARTIFACT_HEADER",
    "REQUEST_ID_HEADER",
    "Admission",
    "ChunkFormat",
    "ClientDisconnectedError",
    "GenerationServing",
    "Services",
    "Tracker",
    "sse",
    "until_disconnect",
]

log = logging.getLogger("tunegate.gateway")

ARTIFACT_HEADER = "x-tunegate-artifact"
# How much of a streamed answer is held to name its label: labels are a few words, and an
# answer that starts with prose past this is "other" anyway.
_WATCHED_CHARS = 512
_SAFE_KEY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
T = TypeVar("T")


class ClientDisconnectedError(Exception):
    """The client closed the connection before the answer was complete."""


class Admission:
    """Bounded admission: at most `limit` generation requests, holding at most
    `token_limit` tokens (prompt + completion budget), in the gateway at once.

    Past either bound a request is refused at once (503 + Retry-After) instead of queueing
    without limit; while draining for shutdown every new request is refused.
    """

    def __init__(self, limit: int, token_limit: int | None = None) -> None:
        self.limit = limit
        self.token_limit = token_limit
        self.in_flight = 0
        self.pending_tokens = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        if self.draining:
            raise OverloadedError("the server is shutting down; retry on another instance")
        if self.in_flight >= self.limit:
            raise OverloadedError(
                f"the server has {self.in_flight} requests in flight (limit {self.limit}); "
                "retry shortly"
            )
        self.in_flight += 1
        self._idle.clear()

    def reserve(self, tokens: int) -> None:
        """Hold `tokens` for an admitted request; `leave(tokens)` gives them back."""
        if self.token_limit is not None and self.pending_tokens + tokens > self.token_limit:
            raise OverloadedError(
                f"the server holds {self.pending_tokens} tokens of admitted requests (limit "
                f"{self.token_limit}); this one needs {tokens}; retry shortly"
            )
        self.pending_tokens += tokens

    def leave(self, tokens: int = 0) -> None:
        self.in_flight -= 1
        self.pending_tokens -= tokens
        if self.in_flight == 0:
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait for the admitted ones; False on timeout."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


@dataclass
class Services:
    """Everything a request handler needs, built once per app."""

    config: GatewayConfig
    router: ModelRouter
    telemetry: Telemetry
    sink: UsageSink
    writer: BatchWriter
    prices: PriceBook
    admission: Admission
    auth: Auth
    capture: Capturer | None = None  # None: nothing is ever captured (tests, tools)


class Tracker:
    """One request's measurements; `finish` reports them (record, metrics, span) once."""

    def __init__(
        self,
        services: Services,
        operation: str,
        requested_model: str,
        request: Request[Any, Any, Any],
    ) -> None:
        self.services = services
        self.operation = operation
        self.requested_model = requested_model
        prefix = "chatcmpl" if operation == "chat" else "cmpl"
        self.request_id = f"{prefix}-{uuid.uuid4().hex}"
        self.arrival = time.time()
        self._t0 = time.perf_counter()
        self.key_id = _key_id(request)
        self.key: ApiKey | None = caller(request)
        self.extra_headers: dict[str, str] = {}  # rate-limit state of the caller's key
        self.reserved_tokens = 0  # held in Admission until the request leaves
        self.target: Target | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.queue_ms: float | None = None
        self.ttft_s: float | None = None
        self.finish_reason: str | None = None
        # Monitoring categories (see UsageRecord): never the prompt or answer text itself.
        self.answer_label: str | None = None
        self.prompt_oov_share: float | None = None
        self.span: Span = services.telemetry.start_span(operation, requested_model, request.headers)
        self._finished = False

    @property
    def headers(self) -> dict[str, str]:
        headers = {REQUEST_ID_HEADER: self.request_id, **self.extra_headers}
        if self.target is not None:
            headers[ARTIFACT_HEADER] = self.target.artifact
        return headers

    def usage(self) -> CompletionUsage:
        return CompletionUsage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached_tokens),
        )

    def observe(self, delta: Delta) -> None:
        """Fold one engine step into the measurements."""
        if self.ttft_s is None and delta.num_tokens:
            self.ttft_s = time.perf_counter() - self._t0
        self.completion_tokens += delta.num_tokens
        if delta.prompt_tokens is not None:
            self.prompt_tokens = delta.prompt_tokens
        if delta.cached_tokens is not None:
            self.cached_tokens = delta.cached_tokens
        if delta.queue_ms is not None:
            self.queue_ms = delta.queue_ms
        if delta.finished:
            self.finish_reason = delta.finish_reason

    def answered(self, text: str) -> None:
        """Note the label a complete answer names, for a target with a label set."""
        if self.target is not None and self.target.labels:
            self.answer_label = normalise_answer(text, self.target.labels)

    def finish(self, status: Status, http_status: int, error: BaseException | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        e2e_s = time.perf_counter() - self._t0
        artifact = self.target.artifact if self.target is not None else None
        base = self.target.engine.model_id if self.target is not None else None
        # Billed: work the engine did for the client, including a stream the client
        # abandoned; not refusals (no engine work) nor our own failures.
        cost = (
            self.services.prices.cost(artifact, base, self.prompt_tokens, self.completion_tokens)
            if status in ("ok", "aborted")
            else 0.0
        )
        try:
            self.services.writer.submit(
                UsageRecord(
                    request_id=self.request_id,
                    created_at=self.arrival,
                    key_id=self.key_id,
                    operation=self.operation,
                    requested_model=self.requested_model,
                    artifact=artifact,
                    prompt_tokens=self.prompt_tokens,
                    completion_tokens=self.completion_tokens,
                    cached_tokens=self.cached_tokens,
                    queue_ms=self.queue_ms,
                    ttft_ms=self.ttft_s * 1000.0 if self.ttft_s is not None else None,
                    e2e_ms=e2e_s * 1000.0,
                    status=status,
                    http_status=http_status,
                    finish_reason=self.finish_reason,
                    cost_usd=cost,
                    answer_label=self.answer_label if status == "ok" else None,
                    prompt_oov_share=self.prompt_oov_share,
                )
            )
        except Exception:
            log.exception("accounting: could not queue record %s", self.request_id)
        error_type = None
        if status != "ok":
            error_type = type(error).__name__ if error is not None else status
        self.services.telemetry.record(
            RequestMetrics(
                operation=self.operation,
                requested_model=self.requested_model,
                response_model=artifact,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                duration_s=e2e_s,
                ttft_s=self.ttft_s,
                error_type=error_type,
            )
        )
        self._end_span(artifact, error_type)

    def _end_span(self, artifact: str | None, error_type: str | None) -> None:
        span = self.span
        if span.is_recording():
            from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
            from opentelemetry.trace import StatusCode

            span.set_attribute(ga.GEN_AI_RESPONSE_ID, self.request_id)
            if artifact is not None:
                span.set_attribute(ga.GEN_AI_RESPONSE_MODEL, artifact)
                span.set_attribute(ARTIFACT, artifact)
            span.set_attribute(ga.GEN_AI_USAGE_INPUT_TOKENS, self.prompt_tokens)
            span.set_attribute(ga.GEN_AI_USAGE_OUTPUT_TOKENS, self.completion_tokens)
            if self.finish_reason:
                span.set_attribute(ga.GEN_AI_RESPONSE_FINISH_REASONS, [self.finish_reason])
            if error_type is not None:
                span.set_attribute("error.type", error_type)
                span.set_status(StatusCode.ERROR, error_type)
        span.end()


def _key_id(request: Request[Any, Any, Any]) -> str | None:
    # An auth layer, when keys are configured, puts the key's id in the scope state.
    value = request.scope.get("state", {}).get("key_id")
    return value if isinstance(value, str) and _SAFE_KEY_ID.match(value) else None


async def _wait_for_disconnect(request: Request[Any, Any, Any]) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Run `work`, cancelling it (and so aborting its engine request) if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientDisconnectedError


def engine_error(exc: Exception, request_id: str) -> APIError:
    """The client-facing error for a failure during generation; internals are only logged."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineRequestError):
        return BadRequestError(str(exc), param=exc.param)
    if isinstance(exc, AdapterLoadFailedError):
        return AdapterLoadError(
            f"model {exc} could not be loaded: its files on the server are damaged or "
            f"unreadable (request {request_id}; it was logged). Other models are unaffected."
        )
    if isinstance(exc, EngineDiedError):
        return EngineUnavailableError(
            "the engine serving this model stopped; the gateway is restarting", retry_after_s=5
        )
    log.error("request %s failed in the engine", request_id, exc_info=exc)
    return ServerError(f"the engine failed to generate (request {request_id}); it was logged")


@dataclass
class _Prepared:
    """A request that passed every check and is ready for the engine."""

    target: Target
    prompt: list[int]
    params: GenerationParams


class GenerationServing:
    """The request flow both generation endpoints share; subclasses render and format."""

    operation = "chat"
    prompt_param = "messages"

    def __init__(self, services: Services) -> None:
        self.services = services

    # ------------------------------------------------------------------ subclass hooks

    async def render(self, body: Any, target: Target) -> list[int]:
        raise NotImplementedError

    def response_body(self, tracker: Tracker, text: str, created: int) -> bytes:
        raise NotImplementedError

    def stream_chunks(self, tracker: Tracker, created: int) -> ChunkFormat:
        raise NotImplementedError

    def requested_max_tokens(self, body: Any) -> int | None:
        return body.max_tokens  # type: ignore[no-any-return]

    def max_tokens_param(self, body: Any) -> str:
        return "max_tokens"

    def captured_request(self, body: Any) -> dict[str, Any]:
        """What a capture keeps of the request: the prompt as the client sent it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the flow

    async def serve(self, body: Any, request: Request[Any, Any, Any]) -> Response[Any] | Stream:
        services = self.services
        tracker = Tracker(services, self.operation, body.model, request)
        try:
            if tracker.key is not None:
                tracker.extra_headers.update(services.auth.limits.take_request(tracker.key))
            services.admission.enter()
        except APIError as exc:
            tracker.finish("rejected", exc.status_code, exc)
            exc.headers.update(tracker.headers)
            raise
        engine: Engine | None = None
        try:
            prepared = await self._prepare(body, tracker)
            engine = prepared.target.engine
            self._admit_tokens(tracker, len(prepared.prompt) + prepared.params.max_tokens)
            if prepared.target.adapter is not None:
                await engine.load_adapter(prepared.target.adapter)
            engine.leases += 1
        except BaseException as exc:
            services.admission.leave(tracker.reserved_tokens)
            if isinstance(exc, Exception):
                exc = engine_error(exc, tracker.request_id)
            api_error = exc if isinstance(exc, APIError) else None
            tracker.finish(
                "rejected" if api_error and api_error.status_code < 500 else "error",
                api_error.status_code if api_error else 500,
                exc,
            )
            if api_error is not None:
                api_error.headers.update(tracker.headers)
            raise exc from None
        deltas = engine.generate(
            prepared.prompt, prepared.params, tracker.request_id, prepared.target.adapter
        )
        keep = self._capture_plan(body, tracker)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = self._stream(tracker, deltas, include_usage, engine, keep)
            # Start the generator now (its first event needs no engine step): a started
            # generator runs its `finally` even if the client leaves before litestar
            # iterates it, so the admission slot and the record are never lost.
            first = await events.__anext__()
            return Stream(
                _prepend(first, events),
                media_type="text/event-stream",
                headers={**tracker.headers, "Cache-Control": "no-cache"},
            )
        try:
            text = await until_disconnect(request, self._collect(tracker, deltas))
        except ClientDisconnectedError as exc:
            tracker.finish("aborted", 499, exc)
            raise
        except Exception as exc:
            api_error = engine_error(exc, tracker.request_id)
            status: Status = "rejected" if api_error.status_code < 500 else "error"
            tracker.finish(status, api_error.status_code, exc)
            api_error.headers.update(tracker.headers)
            raise api_error from None
        except BaseException as exc:
            tracker.finish("error", 500, exc)
            raise
        finally:
            self._release(engine, tracker)
        content = self.response_body(tracker, text, int(tracker.arrival))
        tracker.answered(text)
        tracker.finish("ok", 200)
        if keep is not None:
            keep(text)
        return Response(content=content, media_type="application/json", headers=tracker.headers)

    async def _prepare(self, body: Any, tracker: Tracker) -> _Prepared:
        if body.stream_options is not None and not body.stream:
            raise BadRequestError(
                "stream_options is only allowed when stream is true", param="stream_options"
            )
        router = self.services.router
        if not self._visible(tracker.key, body.model):
            # Exactly the answer for a model that does not exist: nothing tells a key
            # which adapters other tenants have.
            raise ModelNotFoundError(router.not_found_message(body.model))
        target = await router.resolve(body.model, sticky_id(tracker.key_id, body.user))
        tracker.target = target
        if not target.engine.healthy:
            raise EngineUnavailableError(
                f"the engine serving {target.artifact} is not running; retry later",
                retry_after_s=5,
            )
        try:
            prompt = await self.render(body, target)
        except PromptTooLongError as exc:
            raise ContextLengthError(str(exc), param=self.prompt_param) from None
        except InvalidPromptError as exc:
            raise BadRequestError(str(exc), param=self.prompt_param) from None
        tracker.prompt_tokens = len(prompt)
        if target.profile is not None:
            tracker.prompt_oov_share = target.profile.oov_share(prompt)
        params = GenerationParams(
            max_tokens=self._max_tokens(body, target.engine, len(prompt)),
            stream=bool(body.stream),
            temperature=body.temperature,
            top_p=body.top_p,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            seed=body.seed,
            stop=tuple(body.stop_list),
            ignore_eos=bool(body.ignore_eos),
            min_tokens=body.min_tokens or 0,
        )
        return _Prepared(target=target, prompt=prompt, params=params)

    def _visible(self, key: ApiKey | None, model: str) -> bool:
        if key is None or model in self.services.router.bases:
            return True
        return visible(key, model.partition("@")[0])

    def _admit_tokens(self, tracker: Tracker, tokens: int) -> None:
        """Hold the request's tokens in admission, then charge its key's tokens per
        minute (in this order: a request refused for overload costs its key nothing)."""
        services = self.services
        services.admission.reserve(tokens)
        tracker.reserved_tokens = tokens
        if tracker.key is not None:
            tracker.extra_headers.update(services.auth.limits.take_tokens(tracker.key, tokens))

    def _max_tokens(self, body: Any, engine: Engine, prompt_len: int) -> int:
        """The completion budget; a request that cannot fit the context is refused here,
        before the engine, with OpenAI's context_length_exceeded error."""
        limit = engine.max_model_len
        cap = self.services.config.max_tokens_limit
        requested = self.requested_max_tokens(body)
        if requested is not None and requested > cap:
            raise BadRequestError(
                f"max_tokens is too large: {requested}. This server allows at most {cap} "
                "completion tokens per request.",
                param=self.max_tokens_param(body),
                code="invalid_value",
            )
        if requested is not None:
            if prompt_len + requested > limit:
                raise ContextLengthError(
                    f"This model's maximum context length is {limit} tokens. However, you "
                    f"requested {prompt_len + requested} tokens ({prompt_len} in the "
                    f"{self.prompt_param}, {requested} in the completion). Please reduce the "
                    f"length of the {self.prompt_param} or completion.",
                    param=self.max_tokens_param(body),
                )
            return requested
        room = limit - prompt_len
        if room < 1:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens. However, your "
                f"{self.prompt_param} resulted in {prompt_len} tokens, which leaves no room "
                f"for a completion. Please reduce the length of the {self.prompt_param}.",
                param=self.prompt_param,
            )
        default = engine.default_max_tokens
        room = min(room, cap)
        return min(room, default) if default is not None else room

    def _release(self, engine: Engine, tracker: Tracker) -> None:
        engine.leases -= 1
        self.services.admission.leave(tracker.reserved_tokens)

    async def _collect(self, tracker: Tracker, deltas: AsyncIterator[Delta]) -> str:
        text: list[str] = []
        async for delta in deltas:
            tracker.observe(delta)
            text.append(delta.text)
        return "".join(text)

    async def _stream(
        self,
        tracker: Tracker,
        deltas: AsyncIterator[Delta],
        include_usage: bool,
        engine: Engine,
        keep: Callable[[str], None] | None = None,
    ) -> AsyncIterator[bytes]:
        fmt = self.stream_chunks(tracker, int(tracker.arrival))
        status: Status = "error"
        http_status = 200
        error: BaseException | None = None
        parts: list[str] = []  # the assembled answer, only when it is captured
        # Held only to name the answer's label (a label answer is a few words), never stored.
        watched: list[str] | None = [] if tracker.target and tracker.target.labels else None
        watched_chars = 0
        try:
            yield fmt.first()
            async for delta in deltas:
                tracker.observe(delta)
                if delta.text:
                    if keep is not None:
                        parts.append(delta.text)
                    if watched is not None and watched_chars < _WATCHED_CHARS:
                        watched.append(delta.text)
                        watched_chars += len(delta.text)
                    yield fmt.delta(delta.text)
                if delta.finished:
                    yield fmt.finish(delta.finish_reason)
            if include_usage:
                yield fmt.usage()
            if watched is not None:
                tracker.answered("".join(watched))
            status = "ok"
        except (asyncio.CancelledError, GeneratorExit) as exc:
            # The client went away (litestar cancels the stream on disconnect); the
            # engine request is aborted as the cancellation passes through `deltas`.
            status, http_status, error = "aborted", 499, exc
            raise
        except Exception as exc:
            api_error = engine_error(exc, tracker.request_id)
            error, http_status = exc, api_error.status_code
            status = "rejected" if http_status < 500 else "error"
            # The headers are sent already: the error travels as an event (which the
            # OpenAI client raises as an APIError), and [DONE] still closes the stream.
            yield sse(api_error.body().model_dump(mode="json"))
        finally:
            self._release(engine, tracker)
            tracker.finish(status, http_status, error)
            if keep is not None and status == "ok":
                keep("".join(parts))
        yield b"data: [DONE]\n\n"

    def _capture_plan(self, body: Any, tracker: Tracker) -> Callable[[str], None] | None:
        """How to keep this request's answer, or None when it is not captured: its
        artifact has no capture rule and it was not sent with `store: true`. Only complete
        answers are kept (not aborted or failed ones)."""
        capturer, target = self.services.capture, tracker.target
        if capturer is None or target is None:
            return None
        stored = bool(getattr(body, "store", False))
        retention_s = capturer.retention_s(target.artifact, stored)
        if retention_s is None:
            return None

        def keep(text: str) -> None:
            try:
                capturer.submit(
                    Capture(
                        request_id=tracker.request_id,
                        created_at=tracker.arrival,
                        expires_at=tracker.arrival + retention_s,
                        key_id=tracker.key_id,
                        operation=self.operation,
                        requested_model=tracker.requested_model,
                        artifact=target.artifact,
                        request=self.captured_request(body),
                        system_prompt=target.system_prompt if self.operation == "chat" else None,
                        response=text,
                        finish_reason=tracker.finish_reason,
                        prompt_tokens=tracker.prompt_tokens,
                        completion_tokens=tracker.completion_tokens,
                        stored=stored,
                        metadata=dict(getattr(body, "metadata", None) or {}),
                    )
                )
            except Exception:
                # A capture must never cost the client its answer.
                log.exception("capture: could not queue request %s", tracker.request_id)

        return keep


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


_encoder = msgspec.json.Encoder()


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + _encoder.encode(payload) + b"\n\n"


class ChunkFormat:
    """Builds the SSE events of one stream (subclasses: chat / text)."""

    def __init__(self, tracker: Tracker, created: int) -> None:
        self.tracker = tracker
        self.created = created

    def _base(self, obj: str) -> dict[str, Any]:
        target = self.tracker.target
        return {
            "id": self.tracker.request_id,
            "object": obj,
            "created": self.created,
            "model": target.artifact if target is not None else self.tracker.requested_model,
        }

    def first(self) -> bytes:
        return b""

    def delta(self, text: str) -> bytes:
        raise NotImplementedError

    def finish(self, reason: str | None) -> bytes:
        raise NotImplementedError

    def usage(self) -> bytes:
        raise NotImplementedError

    def usage_dict(self) -> dict[str, Any]:
        return self.tracker.usage().model_dump()
