"""Settings of the tuner (`tuner.*` in the config file, `TUNEGATE_TUNER_*` in the environment)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["EVAL_BACKENDS", "TunerConfig"]

EVAL_BACKENDS = ("auto", "vllm", "transformers")


@dataclass
class TunerConfig:
    max_length: int = field(
        default=2048,
        metadata={
            "doc": "Longest example `data validate` accepts, in tokens (and at most the "
            "base model's context)."
        },
    )
    eval_backend: str = field(
        default="auto",
        metadata={
            "doc": "Generation for eval: vllm, transformers, or auto (vLLM on a GPU; "
            "transformers on the CPU, where vLLM's LoRA ops are ~8x slower)."
        },
    )
    eval_batch_size: int = field(
        default=16, metadata={"doc": "Prompts per batch for transformers generation/scoring."}
    )
    few_shot_k: int = field(
        default=2, metadata={"doc": "Few-shot baseline of `tunegate eval`: examples per label."}
    )
    threads: int = field(
        default=0,
        metadata={
            "doc": "CPU threads for training and transformers eval; 0 = the cores that are idle "
            "(by the 1-minute load average) when a run starts, at least 1."
        },
    )
    vllm_kv_cache_gib: float = field(
        default=2.0,
        metadata={"doc": "KV cache of eval's vLLM engine on the CPU (VLLM_CPU_KVCACHE_SPACE)."},
    )

    def __post_init__(self) -> None:
        if not 16 <= self.max_length <= 1_048_576:
            raise ValueError(f"tuner.max_length must be in 16..1048576, got {self.max_length}")
        if self.eval_backend not in EVAL_BACKENDS:
            raise ValueError(
                f"tuner.eval_backend must be one of {', '.join(EVAL_BACKENDS)}, "
                f"got {self.eval_backend!r}"
            )
        if not 1 <= self.eval_batch_size <= 1024:
            raise ValueError(
                f"tuner.eval_batch_size must be in 1..1024, got {self.eval_batch_size}"
            )
        if not 0 <= self.few_shot_k <= 32:
            raise ValueError(f"tuner.few_shot_k must be in 0..32, got {self.few_shot_k}")
        if not 0 <= self.threads <= 4096:
            raise ValueError(f"tuner.threads must be in 0..4096, got {self.threads}")
        if not 0 < self.vllm_kv_cache_gib <= 1024:
            raise ValueError(
                f"tuner.vllm_kv_cache_gib must be in (0, 1024], got {self.vllm_kv_cache_gib}"
            )
