"""Which precision is fast here: bf16 needs native support, else it is emulated and slow.

DESIGN.md's machines had AVX-512 with bf16; a CPU with only AVX2 runs bf16 matmuls ~2.5x
slower than fp32 (measured: one 8x80-token forward of the default model took 48 s in bf16 and
19 s in fp32 on a loaded AVX2 host), so `auto` picks fp32 there.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

__all__ = ["bf16_is_fast", "resolve_precision"]

# CPU flags (Linux /proc/cpuinfo) that mean bf16 matmuls run natively.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def bf16_is_fast() -> bool:
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in _BF16_FLAGS)


def resolve_precision(precision: str) -> str:
    """`auto` -> `bf16` where it is native, else `fp32`; explicit choices pass through."""
    if precision == "auto":
        return "bf16" if bf16_is_fast() else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return precision
