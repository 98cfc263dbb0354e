"""Per-strategy summaries of request records: throughput, latency percentiles, errors, accuracy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from loadtests.runner import RequestRecord

__all__ = ["percentiles", "summarize"]

PERCENTILES = (50, 90, 99)


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99 (linear interpolation, as numpy and vLLM's benchmarks compute them)."""
    if not values:
        empty: dict[str, float | None] = {f"p{p}": None for p in PERCENTILES}
        return empty | {"mean": None}
    arr = np.asarray(values, dtype=float)
    out: dict[str, float | None] = {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}
    out["mean"] = float(arr.mean())
    return out


def summarize(records: Sequence[RequestRecord], duration_s: float) -> dict[str, Any]:
    """Summary of the measured (non-warm-up) records of one strategy."""
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.ok]
    errors = Counter(f"{r.status or '-'} {r.error_type}" for r in measured if not r.ok)
    completion = sum(r.completion_tokens or 0 for r in ok)
    scored = [r for r in ok if r.correct is not None]
    prompt_tokens = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    completion_tokens = [r.completion_tokens for r in ok if r.completion_tokens is not None]
    return {
        "requests": len(measured),
        "ok": len(ok),
        "errors": len(measured) - len(ok),
        "error_rate": (len(measured) - len(ok)) / len(measured) if measured else None,
        "errors_by_type": dict(sorted(errors.items())),
        "duration_s": duration_s,
        "requests_per_s": len(ok) / duration_s if duration_s > 0 else None,
        "output_tokens_per_s": completion / duration_s if duration_s > 0 else None,
        "ttft_ms": percentiles([r.ttft_ms for r in ok if r.ttft_ms is not None]),
        "tpot_ms": percentiles([t for r in ok if (t := r.tpot_ms) is not None]),
        "itl_ms": percentiles([x for r in ok for x in r.itl_ms]),
        "e2e_ms": percentiles([r.e2e_ms for r in ok if r.e2e_ms is not None]),
        "accuracy": sum(bool(r.correct) for r in scored) / len(scored) if scored else None,
        "scored": len(scored),
        "prompt_tokens_per_request": float(np.mean(prompt_tokens)) if prompt_tokens else None,
        "completion_tokens_per_request": (
            float(np.mean(completion_tokens)) if completion_tokens else None
        ),
        "artifacts": dict(Counter(r.artifact for r in ok if r.artifact)),
    }
