"""Who is calling: one authentication middleware for every route of the app.

Every route needs a key as soon as any key exists, except `/health`, the OpenAPI schema and
routes that opt out with `opt={"exclude_from_auth": True}`. Routes with
`opt={"admin": True}` (`/metrics`) need an admin key. A handler learns its caller from
`caller(request)` (the `ApiKey`, or None while auth is off) and scopes what it shows with
`visible(caller, artifact_name)`: anything a key may not see answers exactly as if it did
not exist (404), so a key cannot learn the names of other tenants' adapters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware

from gateway.auth.config import AuthConfig
from gateway.auth.keys import ApiKey, KeyRing, KeyStore
from gateway.auth.limits import RateLimits
from gateway.errors import AuthenticationError, PermissionDeniedError

__all__ = ["Auth", "auth_middleware", "caller", "visible"]

_MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


class Auth:
    """The keys and their rate limits, built once per app."""

    def __init__(self, config: AuthConfig, home: Path) -> None:
        self.keys = KeyRing(
            KeyStore(config.keys_path or home / "keys.sqlite3"),
            config.configured(),
            config.poll_s,
        )
        self.limits = RateLimits()


def caller(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiKey | None:
    """The calling key; None while auth is off (no key exists)."""
    value = connection.scope.get("auth")
    return value if isinstance(value, ApiKey) else None


def visible(key: ApiKey | None, artifact_name: str) -> bool:
    """May `key` see and use the store artifact `artifact_name`? (Base models: always.)"""
    return key is None or key.allows(artifact_name)


def _masked(token: str) -> str:
    # OpenAI's message quotes the start and end of a wrong key so a user can tell which
    # of theirs it was, never enough of it to be useful to anyone else.
    return f"{token[:6]}***{token[-4:]}" if len(token) > 12 else "***"


class _KeyMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        auth: Auth = connection.app.state.services.auth
        handler = connection.scope.get("route_handler")
        admin_route = bool(handler is not None and handler.opt.get("admin"))
        if not await auth.keys.enabled():
            return AuthenticationResult(user=None, auth=None)
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError(_MISSING)
        key = await auth.keys.verify(token)
        if key is None:
            raise AuthenticationError(
                f"Incorrect API key provided: {_masked(token)}.", code="invalid_api_key"
            )
        if admin_route and not key.admin:
            raise PermissionDeniedError(
                f"key {key.name!r} may not call {connection.url.path} (it needs an admin key)"
            )
        # `state.key_id` is what the accounting record of a request carries.
        connection.scope.setdefault("state", {})["key_id"] = key.name
        return AuthenticationResult(user=key.name, auth=key)


def auth_middleware() -> DefineMiddleware:
    return DefineMiddleware(_KeyMiddleware, exclude=["^/schema", "^/health$"])
