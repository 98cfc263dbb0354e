"""Settings of API keys (`gateway.auth.*` in the config file, `TUNEGATE_GATEWAY_AUTH_*`).

Auth is off while no key exists. Keys come from two places: the key table that
`tunegate keys create` writes (hashed, salted) and `gateway.auth.keys` in the config file,
which holds only the SHA-256 of each key (`printf %s "$KEY" | sha256sum`), never the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["KEY_NAME", "AuthConfig", "ConfiguredKey"]

# Key names share the artifact name rule: safe in logs, headers and accounting.
KEY_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = {"name", "sha256", "adapters", "rpm", "tpm", "admin"}


@dataclass(frozen=True)
class ConfiguredKey:
    """One entry of `gateway.auth.keys`, validated."""

    name: str
    sha256: str
    adapters: tuple[str, ...]
    rpm: int | None
    tpm: int | None
    admin: bool


def _limit(entry: dict[str, Any], name: str, where: str) -> int | None:
    value = entry.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}.{name} must be a whole number >= 1, got {value!r}")
    return value


@dataclass
class AuthConfig:
    """API keys and their scopes (`gateway.auth.*`)."""

    keys: list[dict[str, Any]] = field(
        default_factory=list,
        metadata={
            "doc": "Keys besides the key table: [{name, sha256 (hex SHA-256 of the key), "
            "adapters: [names or '*'], rpm, tpm, admin}]."
        },
    )
    keys_path: Path | None = field(
        default=None,
        metadata={
            "doc": "Key table (SQLite) of `tunegate keys`; empty: $TUNEGATE_HOME/keys.sqlite3."
        },
    )
    poll_s: float = field(
        default=0.5,
        metadata={"doc": "How often the gateway re-reads the key table (new and revoked keys)."},
    )

    def __post_init__(self) -> None:
        if not 0 < self.poll_s <= 5.0:
            raise ValueError("gateway.auth.poll_s must be in (0, 5]")
        self.configured()  # validates `keys`

    def configured(self) -> list[ConfiguredKey]:
        out: list[ConfiguredKey] = []
        for i, entry in enumerate(self.keys):
            where = f"gateway.auth.keys[{i}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{where} must be a mapping, got {entry!r}")
            unknown = set(entry) - _FIELDS
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
            name = entry.get("name")
            if not isinstance(name, str) or not KEY_NAME.match(name):
                raise ValueError(f"{where}.name must match {KEY_NAME.pattern}, got {name!r}")
            digest = str(entry.get("sha256", "")).lower()
            if not _SHA256.match(digest):
                raise ValueError(f"{where}.sha256 must be 64 hex digits (SHA-256 of the key)")
            adapters = entry.get("adapters", [])
            if not isinstance(adapters, list) or not all(isinstance(a, str) for a in adapters):
                raise ValueError(f"{where}.adapters must be a list of adapter names")
            admin = entry.get("admin", False)
            if not isinstance(admin, bool):
                raise ValueError(f"{where}.admin must be true or false")
            out.append(
                ConfiguredKey(
                    name=name,
                    sha256=digest,
                    adapters=tuple(adapters),
                    rpm=_limit(entry, "rpm", where),
                    tpm=_limit(entry, "tpm", where),
                    admin=admin,
                )
            )
        names = [k.name for k in out]
        if len(set(names)) != len(names):
            raise ValueError(f"gateway.auth.keys names a key twice: {names}")
        return out
