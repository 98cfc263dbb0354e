"""Settings of the gateway (`gateway.*` in the config file, `TUNEGATE_GATEWAY_*` in the env).

Three small sections: the vLLM engine(s) (`gateway.engine.*`), accounting and prices
(`gateway.accounting.*`), and the server itself (the fields of `GatewayConfig`).

Prices. Every request's cost is

    cost_usd = (prompt_tokens * input_weight + completion_tokens) * usd_per_output_token

where the price of an output token is what the serving machine costs for the time it takes
to produce one token at its measured throughput:

    usd_per_output_token = usd_per_gpu_hour / (3600 * throughput_tok_s)

`input_weight` (default 0.1) prices a prompt token as a fraction of an output token, because
prefill handles a whole prompt in one batched forward pass while decode pays one pass per
token. `accounting.prices` overrides the derived price per served model, keyed by an exact
version (`name@3`), an artifact name (`name`, every version) or a base model id, with values
`{"input": USD per 1M prompt tokens, "output": USD per 1M completion tokens}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters_store.config import check_postgres_url
from adapters_store.hardware import ENGINE_DTYPES
from gateway import fast_lora as fast_lora_plugin
from gateway import shm_polling
from gateway.auth.config import AuthConfig
from gateway.capture.config import CaptureConfig
from gateway.monitoring.config import MonitorConfig
from gateway.replicas.config import ReplicasConfig

__all__ = ["AccountingConfig", "EngineConfig", "GatewayConfig", "Price"]

_DTYPES = ENGINE_DTYPES  # what engine_dtype() accepts; auto is resolved there


@dataclass
class EngineConfig:
    """One vLLM `AsyncLLM` per served base model (`gateway.engine.*`)."""

    bases: list[str] = field(
        default_factory=list,
        metadata={"doc": "Base model ids to serve, one engine each; empty means [default_base]."},
    )
    dtype: str = field(
        default="auto",
        metadata={
            "doc": f"Weights dtype: {_DTYPES}; auto is bfloat16 where the hardware computes "
            "it natively (CUDA, CPUs with AVX-512 BF16 or AMX), else float32 (4x faster "
            "than emulated bfloat16 on AVX2 CPUs)."
        },
    )
    max_model_len: int = field(
        default=2048, metadata={"doc": "Context length (prompt + completion tokens)."}
    )
    max_num_seqs: int = field(
        default=64, metadata={"doc": "Most sequences the engine batches in one step."}
    )
    kv_cache_gib: float | None = field(
        default=None,
        metadata={
            "doc": "KV-cache size in GiB (vLLM kv_cache_memory_bytes, which is what "
            "VLLM_CPU_KVCACHE_SPACE sets on the CPU); empty: that variable if set, else 2, "
            "unless extra_args sets gpu_memory_utilization (then vLLM sizes it from that)."
        },
    )
    enable_lora: bool = field(default=True, metadata={"doc": "Serve LoRA adapters."})
    max_loras: int = field(
        default=4, metadata={"doc": "Adapters that can run in one batch (GPU/engine slots)."}
    )
    max_cpu_loras: int = field(
        default=16,
        metadata={"doc": "Adapters kept loaded in host memory (LRU cache, >= max_loras)."},
    )
    max_lora_rank: int = field(default=64, metadata={"doc": "Largest adapter rank served."})
    seed: int = field(default=0, metadata={"doc": "Engine seed (requests may pass their own)."})
    serve_model_artifacts: bool = field(
        default=False,
        metadata={
            "doc": "Also serve `model` artifacts (distilled / fully tuned), each on its own "
            "engine started on first use."
        },
    )
    max_model_engines: int = field(
        default=1,
        metadata={"doc": "Most `model`-artifact engines alive at once (idle ones are evicted)."},
    )
    extra_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "doc": "More vLLM AsyncEngineArgs, passed through under vLLM's names, e.g. "
            '{"tensor_parallel_size": 2, "distributed_executor_backend": "ray"}; they win '
            "over the fields above."
        },
    )

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"gateway.engine.dtype must be one of {_DTYPES}, got {self.dtype!r}")
        for name in ("max_model_len", "max_num_seqs", "max_loras", "max_lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"gateway.engine.{name} must be >= 1")
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"gateway.engine.max_cpu_loras ({self.max_cpu_loras}) must be >= "
                f"max_loras ({self.max_loras})"
            )
        if self.kv_cache_gib is not None and not self.kv_cache_gib > 0:
            raise ValueError("gateway.engine.kv_cache_gib must be > 0")
        if self.max_model_engines < 1:
            raise ValueError("gateway.engine.max_model_engines must be >= 1")
        if not isinstance(self.extra_args, dict):
            raise ValueError("gateway.engine.extra_args must be a mapping")
        if len(set(self.bases)) != len(self.bases):
            raise ValueError(f"gateway.engine.bases lists a model twice: {self.bases}")


@dataclass(frozen=True)
class Price:
    """USD per one million tokens."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


@dataclass
class AccountingConfig:
    """Per-request records and prices (`gateway.accounting.*`)."""

    path: Path | None = field(
        default=None,
        metadata={"doc": "Records' SQLite file; empty: $TUNEGATE_HOME/accounting.sqlite3."},
    )
    url: str | None = field(
        default=None,
        metadata={
            "doc": "A postgresql:// URL to keep the records in PostgreSQL instead of `path`, "
            "so several gateways share one /v1/usage; empty: the SQLite file."
        },
    )
    flush_interval_s: float = field(
        default=0.5, metadata={"doc": "Longest time a record waits in memory (<= 1 s)."}
    )
    batch_size: int = field(default=256, metadata={"doc": "Records written per transaction."})
    usd_per_gpu_hour: float = field(
        default=2.0,
        metadata={
            "doc": "Hourly price of the machine that runs the engine. Default prices: an "
            "output token costs usd_per_gpu_hour / (3600 * throughput_tok_s), a prompt "
            "token input_weight times that."
        },
    )
    throughput_tok_s: float = field(
        default=176.0,
        metadata={
            "doc": "Measured output tokens/s of the engine at full batch (176: SmolLM2-135M, "
            "bf16, 2 CPU cores, 32 concurrent chats)."
        },
    )
    input_weight: float = field(
        default=0.1, metadata={"doc": "Price of a prompt token as a fraction of an output token."}
    )
    prices: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "doc": 'Overrides per model ref/name/base: {"input": $/1M tokens, "output": $/1M}.'
        },
    )

    def __post_init__(self) -> None:
        if self.url == "":
            self.url = None  # an empty env var or file value means the default
        if self.url is not None:
            check_postgres_url(self.url, "gateway.accounting.url")
        if not 0 < self.flush_interval_s <= 1.0:
            raise ValueError("gateway.accounting.flush_interval_s must be in (0, 1]")
        if self.batch_size < 1:
            raise ValueError("gateway.accounting.batch_size must be >= 1")
        for name in ("usd_per_gpu_hour", "throughput_tok_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"gateway.accounting.{name} must be a positive number")
        if not 0 <= self.input_weight <= 1:
            raise ValueError("gateway.accounting.input_weight must be in [0, 1]")
        self.price_overrides()  # validates the shape of `prices`

    @property
    def default_price(self) -> Price:
        """The derived price (see the module docstring for the formula)."""
        per_output_token = self.usd_per_gpu_hour / (3600.0 * self.throughput_tok_s)
        return Price(
            input=per_output_token * self.input_weight * 1e6, output=per_output_token * 1e6
        )

    def price_overrides(self) -> dict[str, Price]:
        out: dict[str, Price] = {}
        for key, value in self.prices.items():
            if not isinstance(value, dict) or set(value) - {"input", "output"}:
                raise ValueError(
                    f"gateway.accounting.prices[{key!r}] must be a mapping with keys "
                    f"'input' and 'output' (USD per 1M tokens), got {value!r}"
                )
            try:
                price = Price(float(value.get("input", 0.0)), float(value.get("output", 0.0)))
            except (TypeError, ValueError):
                raise ValueError(
                    f"gateway.accounting.prices[{key!r}]: prices must be numbers"
                ) from None
            if price.input < 0 or price.output < 0:
                raise ValueError(f"gateway.accounting.prices[{key!r}]: prices must be >= 0")
            out[str(key)] = price
        return out


@dataclass
class GatewayConfig:
    """The OpenAI-compatible server (`gateway.*`)."""

    host: str = field(default="127.0.0.1", metadata={"doc": "Address `tunegate serve` binds."})
    port: int = field(default=8000, metadata={"doc": "Port `tunegate serve` listens on."})
    store_poll_s: float = field(
        default=0.2,
        metadata={"doc": "How often the store's change counter is read (publish -> served)."},
    )
    max_pending: int = field(
        default=256,
        metadata={"doc": "Requests admitted at once; beyond that 503 with Retry-After."},
    )
    max_pending_tokens: int = field(
        default=262144,
        metadata={
            "doc": "Tokens (prompt + max_tokens) of the admitted requests together; beyond "
            "that 503 with Retry-After."
        },
    )
    max_tokens_limit: int = field(
        default=4096,
        metadata={"doc": "Largest max_tokens a request may ask for (400 above it)."},
    )
    max_body_bytes: int = field(
        default=4 * 2**20, metadata={"doc": "Largest request body (413 above it)."}
    )
    drain_timeout_s: float = field(
        default=30.0,
        metadata={"doc": "On SIGTERM, how long in-flight requests may finish before abort."},
    )
    # The next three are read by tunegate's plugins inside vLLM's processes, which see the
    # environment only: `plugin_env` gives the effective values, exported before the engine
    # starts (their TUNEGATE_GATEWAY_* names are the plugins' own variables).
    fast_lora: bool = field(
        default=True,
        metadata={"doc": "Grouped CPU LoRA ops (gateway/fast_lora, docs/fast-lora.md)."},
    )
    fast_lora_cache_mib: int = field(
        default=fast_lora_plugin.DEFAULT_CACHE_MIB,
        metadata={
            "doc": "Host memory (MiB) that keeps each adapter's fused LoRA matrices while "
            "it is out of the engine's slots (fast LoRA ops; 0: rebuilt at every entry)."
        },
    )
    shm_poll: bool = field(
        default=True,
        metadata={
            "doc": "Polite polling of vLLM's shared-memory queues on the CPU "
            "(gateway/shm_polling.py), so the engine does not starve the HTTP server."
        },
    )
    engine: EngineConfig = field(default_factory=EngineConfig)
    accounting: AccountingConfig = field(default_factory=AccountingConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    replicas: ReplicasConfig = field(default_factory=ReplicasConfig)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"gateway.port must be in 1..65535, got {self.port}")
        if not 0 < self.store_poll_s <= 1.0:
            raise ValueError("gateway.store_poll_s must be in (0, 1] (publishes show within 1 s)")
        if self.max_pending < 1:
            raise ValueError("gateway.max_pending must be >= 1")
        for name in ("max_tokens_limit", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"gateway.{name} must be >= 1")
        if self.max_pending_tokens < self.engine.max_model_len:
            # Else a request that fits the context could never be admitted.
            raise ValueError(
                f"gateway.max_pending_tokens ({self.max_pending_tokens}) must be >= "
                f"gateway.engine.max_model_len ({self.engine.max_model_len})"
            )
        if self.drain_timeout_s < 0:
            raise ValueError("gateway.drain_timeout_s must be >= 0")
        if self.fast_lora_cache_mib < 0:
            raise ValueError("gateway.fast_lora_cache_mib must be >= 0")

    def plugin_env(self) -> dict[str, str]:
        """The environment that carries these settings to the plugins in vLLM's processes."""
        return {
            fast_lora_plugin.ENV_VAR: "1" if self.fast_lora else "0",
            fast_lora_plugin.CACHE_ENV_VAR: str(self.fast_lora_cache_mib),
            shm_polling.ENV_VAR: "1" if self.shm_poll else "0",
        }
