"""API keys, their adapter scopes and per-key rate limits (off while no key exists).

Route handlers get the calling key with `caller(request)` (an `ApiKey`, or None while auth
is off) and hide what it may not see with `visible(key, artifact_name)`. The litestar and
`limits` parts load on first use: `gateway.config` imports this package for its section.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gateway.auth.config import AuthConfig, ConfiguredKey
from gateway.auth.keys import KEY_PREFIX, ApiKey, KeyRing, KeyStore, KeyTableError, sha256_hex

if TYPE_CHECKING:
    from gateway.auth.guard import Auth, auth_middleware, caller, visible
    from gateway.auth.limits import RateLimits

__all__ = [
    "KEY_PREFIX",
    "ApiKey",
    "Auth",
    "AuthConfig",
    "ConfiguredKey",
    "KeyRing",
    "KeyStore",
    "KeyTableError",
    "RateLimits",
    "auth_middleware",
    "caller",
    "sha256_hex",
    "visible",
]

_LAZY = {
    "Auth": "gateway.auth.guard",
    "auth_middleware": "gateway.auth.guard",
    "caller": "gateway.auth.guard",
    "visible": "gateway.auth.guard",
    "RateLimits": "gateway.auth.limits",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gateway.auth' has no attribute {name!r}")
