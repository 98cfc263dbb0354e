"""One in-process vLLM `AsyncLLM` per served model, behind the few calls the gateway makes.

The gateway renders prompts with vLLM's own renderer (the model's chat template, its
tokenizer, its length checks) and samples with vLLM's `SamplingParams`, so a request gives
the same tokens here as through `vllm.entrypoints.openai.api_server`. Everything vLLM-typed
stays in this module: the rest of the gateway speaks `GenerationParams`, `Adapter` and
`Delta`, which is also the seam where unit tests put a fake engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import EngineConfig

if TYPE_CHECKING:
    from vllm.outputs import RequestOutput
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = [
    "Adapter",
    "Delta",
    "Engine",
    "EngineRequestError",
    "EngineSpec",
    "GenerationParams",
    "InvalidPromptError",
    "PromptTooLongError",
]

log = logging.getLogger("tunegate.gateway")

# OpenAI's defaults, used where neither the request nor the model's generation config
# says otherwise (the same priority vLLM's own server applies).
_OPENAI_DEFAULTS: dict[str, float] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
_MODEL_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
_CPU_KV_ENV = "VLLM_CPU_KVCACHE_SPACE"


class InvalidPromptError(ValueError):
    """The prompt cannot be rendered: the chat template refused the conversation (e.g.
    roles that do not alternate) or a token id is outside the vocabulary."""


class PromptTooLongError(InvalidPromptError):
    """vLLM's renderer refused the prompt before tokenizing all of it (context overflow)."""


class EngineRequestError(ValueError):
    """The engine refused the request's parameters (a client error, not an engine fault)."""


@dataclass(frozen=True)
class EngineSpec:
    """What one engine serves: a model folder under an id, and whether it takes adapters."""

    model_id: str
    path: Path
    enable_lora: bool


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter version as the engine loads it."""

    name: str  # `name@version`: unique per version, vLLM's identity of an adapter
    uid: int  # catalog-wide and never reused: vLLM's lora_int_id (its cache slot key)
    path: Path


@dataclass(frozen=True)
class GenerationParams:
    """Sampling as the request asked; None means "the model's default, else OpenAI's"."""

    max_tokens: int
    stream: bool
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delta:
    """What one engine step adds to a request (all of it at once when not streaming)."""

    text: str
    num_tokens: int
    finished: bool
    finish_reason: str | None
    prompt_tokens: int | None
    cached_tokens: int | None
    queue_ms: float | None  # time in the scheduler's waiting queue, once scheduled


class Engine:
    """An `AsyncLLM` plus what the serving code needs to know about its model."""

    def __init__(self, spec: EngineSpec, config: EngineConfig) -> None:
        self.spec = spec
        self.config = config
        self._llm: AsyncLLM | None = None
        self.max_model_len = config.max_model_len
        # The model's generation_config.json defaults (what vLLM's server applies too).
        self.default_sampling: dict[str, Any] = {}
        # Requests admitted for this engine and not finished: they may not have reached
        # the engine yet, so an engine is idle only when this and `running()` are both 0.
        self.leases = 0

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def llm(self) -> AsyncLLM:
        if self._llm is None:
            raise RuntimeError(f"engine for {self.model_id} is not started")
        return self._llm

    @property
    def default_max_tokens(self) -> int | None:
        value = self.default_sampling.get("max_tokens")
        return value if isinstance(value, int) else None

    def engine_args(self) -> dict[str, Any]:
        cfg = self.config
        args: dict[str, Any] = {
            "model": str(self.spec.path),
            "served_model_name": self.model_id,
            "dtype": cfg.dtype,
            "max_model_len": cfg.max_model_len,
            "max_num_seqs": cfg.max_num_seqs,
            "kv_cache_memory_bytes": int(self.kv_cache_gib() * 2**30),
            "seed": cfg.seed,
            "enable_lora": self.spec.enable_lora,
        }
        if self.spec.enable_lora:
            args.update(
                max_loras=cfg.max_loras,
                max_cpu_loras=cfg.max_cpu_loras,
                max_lora_rank=cfg.max_lora_rank,
            )
        args.update(cfg.extra_args)
        return args

    def kv_cache_gib(self) -> float:
        if self.config.kv_cache_gib is not None:
            return self.config.kv_cache_gib
        env = os.environ.get(_CPU_KV_ENV, "")
        return float(env) if env else 2.0

    async def start(self) -> None:
        """Build the engine (tens of seconds) without blocking the event loop."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        if self.config.kv_cache_gib is not None and os.environ.get(_CPU_KV_ENV):
            # vLLM's CPU platform lets this variable override kv_cache_memory_bytes (in
            # this process and the engine's, which inherit it); a configured size wins.
            log.info("gateway.engine.kv_cache_gib is set: ignoring %s", _CPU_KV_ENV)
            del os.environ[_CPU_KV_ENV]
        try:
            engine_args = AsyncEngineArgs(**self.engine_args())
        except TypeError as exc:
            raise ValueError(f"gateway.engine.extra_args: {exc}") from exc
        log.info("starting vLLM engine for %s (%s)", self.model_id, self.spec.path)
        llm = await asyncio.to_thread(AsyncLLM.from_engine_args, engine_args)
        self.max_model_len = llm.model_config.max_model_len
        self.default_sampling = llm.model_config.get_diff_sampling_param()
        self._llm = llm

    def shutdown(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            llm.shutdown()

    def running(self) -> int:
        """Requests the engine holds (waiting or running); 0 when not started."""
        return self._llm.get_num_unfinished_requests() if self._llm is not None else 0

    @property
    def healthy(self) -> bool:
        return self._llm is not None and not self._llm.errored

    # ------------------------------------------------------------------ prompts

    async def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Apply the model's chat template and tokenize; the prompt's token ids."""
        from jinja2 import TemplateError
        from vllm.exceptions import VLLMValidationError
        from vllm.renderers.params import ChatParams, TokenizeParams

        renderer = self.llm.renderer
        tok_params = TokenizeParams(max_total_tokens=self.max_model_len, add_special_tokens=False)
        try:
            _, (engine_input,) = await renderer.render_chat_async(
                [messages],  # type: ignore[list-item]
                ChatParams(),
                tok_params,
            )
        except VLLMValidationError as exc:
            raise PromptTooLongError(str(exc)) from exc
        except TemplateError as exc:
            raise InvalidPromptError(
                f"the model's chat template refused the messages: {exc}"
            ) from exc
        return list(engine_input["prompt_token_ids"])  # type: ignore[index]

    async def render_text(self, prompt: str | list[int]) -> list[int]:
        """Tokenize a completion prompt (token ids pass through, checked against the vocab)."""
        from vllm.exceptions import VLLMValidationError
        from vllm.renderers.inputs.preprocess import parse_model_prompt
        from vllm.renderers.params import TokenizeParams

        renderer = self.llm.renderer
        if not isinstance(prompt, str):
            try:
                renderer.validate_token_ids(prompt, parameter="prompt")
            except VLLMValidationError as exc:
                raise InvalidPromptError(str(exc)) from exc
        tok_params = TokenizeParams(max_total_tokens=self.max_model_len, add_special_tokens=True)
        parsed = parse_model_prompt(
            self.llm.model_config,
            {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": prompt},
        )
        try:
            (engine_input,) = await renderer.render_cmpl_async([parsed], tok_params)
        except VLLMValidationError as exc:
            raise PromptTooLongError(str(exc)) from exc
        return list(engine_input["prompt_token_ids"])  # type: ignore[index]

    # ------------------------------------------------------------------ generation

    def sampling_params(self, params: GenerationParams) -> SamplingParams:
        """Request values, else the model's generation_config.json, else OpenAI's."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        values: dict[str, Any] = dict(_OPENAI_DEFAULTS)
        values.update(
            {k: self.default_sampling[k] for k in _MODEL_DEFAULT_KEYS if k in self.default_sampling}
        )
        for name in _OPENAI_DEFAULTS:
            value = getattr(params, name)
            if value is not None:
                values[name] = value
        try:
            return SamplingParams.from_optional(
                n=1,
                **values,
                seed=params.seed,
                stop=list(params.stop) or None,
                max_tokens=params.max_tokens,
                output_kind=(
                    RequestOutputKind.DELTA if params.stream else RequestOutputKind.FINAL_ONLY
                ),
                skip_clone=True,  # made fresh per request
            )
        except ValueError as exc:
            raise EngineRequestError(f"invalid sampling parameters: {exc}") from exc

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: GenerationParams,
        request_id: str,
        adapter: Adapter | None,
    ) -> AsyncIterator[Delta]:
        """Stream the request's progress. Cancelling or closing this generator aborts the
        request in the engine (vLLM's generator aborts as the cancellation passes it)."""
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import tokens_input
        from vllm.lora.request import LoRARequest

        lora = (
            LoRARequest(
                lora_name=adapter.name,
                lora_int_id=adapter.uid,
                lora_path=str(adapter.path),
                base_model_name=self.model_id,
            )
            if adapter is not None
            else None
        )
        outputs = self.llm.generate(
            tokens_input(prompt_token_ids),
            self.sampling_params(params),
            request_id,
            lora_request=lora,
        )
        try:
            async for out in outputs:
                yield _delta(out)
        except VLLMClientError as exc:
            raise EngineRequestError(str(exc)) from exc
        finally:
            await outputs.aclose()  # type: ignore[attr-defined]


def _delta(out: RequestOutput) -> Delta:
    choice = out.outputs[0] if out.outputs else None
    stats = out.metrics
    queue_ms = None
    if stats is not None and getattr(stats, "scheduled_ts", 0.0) > 0.0:
        # Both timestamps come from the engine core's monotonic clock.
        queue_ms = max(0.0, (stats.scheduled_ts - stats.queued_ts) * 1000.0)
    return Delta(
        text=choice.text if choice is not None else "",
        num_tokens=len(choice.token_ids) if choice is not None else 0,
        finished=out.finished,
        finish_reason=choice.finish_reason if choice is not None and out.finished else None,
        prompt_tokens=len(out.prompt_token_ids) if out.prompt_token_ids is not None else None,
        cached_tokens=out.num_cached_tokens,
        queue_ms=queue_ms,
    )
