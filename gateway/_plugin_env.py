"""Settings of tunegate's vLLM plugins, read from the environment.

The plugins run inside vLLM's processes (engine core, workers), which never see tunegate's
config file; the environment is what reaches them. Standard library only, like the
plugins. A value that cannot be read raises rather than falls back to a default, so a typo
cannot silently change how the engine runs.
"""

from __future__ import annotations

from collections.abc import Mapping

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def env_flag(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    """`name` as a boolean; unset or blank gives `default`."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"{name}={raw!r} is not a boolean: use one of {', '.join(sorted(_TRUE | _FALSE))}"
    )


def env_whole_number(
    env: Mapping[str, str], name: str, *, default: int, minimum: int, unit: str
) -> int:
    """`name` as a whole number of `unit`, at least `minimum`; unset or blank gives
    `default`."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        number = int(raw)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ValueError(f"{name}={raw!r} is not a whole number of {unit} ({minimum} or more)")
    return number
