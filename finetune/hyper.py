"""OpenAI's supervised hyperparameters (`"auto"` or a number each) -> concrete values.

Resolved when the job is created, so the job object shows what will actually run (OpenAI
shows the resolved numbers too once a job starts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetune.config import FinetuneConfig

__all__ = ["HyperparameterError", "resolve_hyperparameters"]

# (name, smallest, largest, integer?) as OpenAI documents them.
_RANGES: dict[str, tuple[float, float, bool]] = {
    "n_epochs": (1, 50, True),
    "batch_size": (1, 256, True),
    "learning_rate_multiplier": (1e-6, 10.0, False),
}


class HyperparameterError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def resolve_hyperparameters(
    given: Mapping[str, Any] | None, config: FinetuneConfig, where: str
) -> dict[str, int | float]:
    """`where` is the request path of `given` (for the error's `param`)."""
    given = dict(given or {})
    unknown = set(given) - set(_RANGES)
    if unknown:
        name = sorted(unknown)[0]
        raise HyperparameterError(
            f"{where}.{name}", f"unknown hyperparameter {name!r}; known: {', '.join(_RANGES)}"
        )
    defaults: dict[str, int | float] = {
        "n_epochs": config.default_epochs,
        "batch_size": config.default_batch_size,
        "learning_rate_multiplier": 1.0,
    }
    out: dict[str, int | float] = {}
    for name, (low, high, integer) in _RANGES.items():
        value = given.get(name, "auto")
        if value is None or value == "auto":
            out[name] = defaults[name]
            continue
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type or not low <= value <= high:
            kind = "an integer" if integer else "a number"
            raise HyperparameterError(
                f"{where}.{name}",
                f'{name} must be "auto" or {kind} in [{low:g}, {high:g}], got {value!r}',
            )
        out[name] = int(value) if integer else float(value)
    return out
