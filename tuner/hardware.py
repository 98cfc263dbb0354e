"""Precision and threads for training and evaluation on this machine.

Whether bf16 is fast is decided once for the whole product (`adapters_store.hardware`):
a CPU with only AVX2 runs bf16 matmuls ~2.5x slower than fp32 (measured: one 8x80-token
forward of the default model took 48 s in bf16 and 19 s in fp32 on a loaded AVX2 host), so
`auto` picks fp32 there.
"""

from __future__ import annotations

from collections.abc import Callable

from adapters_store.hardware import bf16_is_fast

__all__ = ["auto_threads", "bf16_is_fast", "configure_threads", "resolve_precision"]


def resolve_precision(precision: str) -> str:
    """`auto` -> `bf16` where it is native, else `fp32`; explicit choices pass through."""
    if precision == "auto":
        return "bf16" if bf16_is_fast() else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return precision


def auto_threads(cores: int, load: float) -> int:
    """Threads for a run that starts while `load` runnable tasks share `cores` cores.

    PyTorch's OpenMP threads spin at every barrier; when another process holds a core, each
    parallel region waits for the descheduled thread. Measured on this 2-core host at load ~9:
    one 8x80-token forward of the default model took 29 s with 2 threads and 6.8 s with 1.
    So a run takes only the cores that are idle, and at least one.
    """
    idle = cores - load
    return max(1, min(cores, int(idle + 0.5)))


def configure_threads(setting: int, echo: Callable[[str], None] | None = None) -> int:
    """Set torch's intra-op threads: `setting`, or `auto_threads` for 0; returns the count."""
    import os

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if setting:
        threads = setting
        why = "tuner.threads"
    else:
        load = os.getloadavg()[0]
        threads = auto_threads(cores, load)
        why = f"{cores} cores, load average {load:.1f}; tuner.threads sets it"
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if echo is not None:
        echo(f"using {threads} CPU thread(s) ({why})")
    return threads
