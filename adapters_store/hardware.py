"""Which weights dtype computes fast on this machine; shared by the gateway and the tuner.

bf16 is fast only where the hardware multiplies it natively (CUDA cards that support it,
CPUs with AVX-512 BF16 or AMX). Elsewhere PyTorch emulates it: on this project's AVX2 hosts
(AMD EPYC, no AVX-512) an offline vLLM engine on the default model decoded 32 concurrent
requests at 20.9 tokens/s in bf16 and 86.4 tokens/s in float32 (same engine settings, one
run after the other), and a training forward was ~2.5x slower in bf16. So `auto` means bf16
where it is native and float32 elsewhere; weights stay bf16 on disk either way.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

__all__ = ["ENGINE_DTYPES", "bf16_is_fast", "engine_dtype"]

# CPU flags (Linux /proc/cpuinfo) that mean bf16 matmuls run natively.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_CPUINFO = Path("/proc/cpuinfo")
ENGINE_DTYPES = ("auto", "bfloat16", "float16", "float32")


@lru_cache(maxsize=1)
def bf16_is_fast() -> bool:
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = _CPUINFO.read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in _BF16_FLAGS)


def engine_dtype(setting: str) -> str:
    """The dtype to give vLLM for a `dtype` setting: `auto` is resolved here (vLLM's own
    `auto` takes the checkpoint's dtype, bf16, even where bf16 is emulated); explicit
    choices pass through."""
    if setting not in ENGINE_DTYPES:
        raise ValueError(f"dtype must be one of {ENGINE_DTYPES}, got {setting!r}")
    if setting != "auto":
        return setting
    return "bfloat16" if bf16_is_fast() else "float32"
