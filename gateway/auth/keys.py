"""API keys: the key table `tunegate keys` writes, and the gateway's view of every key.

A key is `sk-tg-<id>-<secret>`: `id` (12 hex digits) finds the row, `secret` (256 random
bits) is never stored, only `sha256(salt + secret)` with a per-key random salt. A plain
salted SHA-256 is enough for a secret with 256 bits of entropy (what GitHub and Stripe do for
tokens); slow password hashes protect low-entropy secrets and would cost every request. The
digest is compared with `hmac.compare_digest`, so the time a check takes says nothing about
how much of a guess was right.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.auth.config import KEY_NAME, ConfiguredKey

__all__ = ["KEY_PREFIX", "ApiKey", "KeyRing", "KeyStore", "KeyTableError", "sha256_hex"]

KEY_PREFIX = "sk-tg-"
_ID_HEX = 12
ALL_ADAPTERS = "*"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    salt BLOB NOT NULL,
    digest TEXT NOT NULL,
    adapters TEXT NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""


class KeyTableError(ValueError):
    """A key operation that cannot be done (bad name, duplicate, unknown key)."""


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _digest(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """What a caller may do; never holds the key itself."""

    name: str  # the identity recorded in accounting (`key_id`)
    adapters: tuple[str, ...]  # artifact names it may use; "*" means every one
    rpm: int | None = None  # requests per minute; None: unlimited
    tpm: int | None = None  # tokens (prompt + max_tokens) per minute; None: unlimited
    admin: bool = False  # may call admin routes and see every key's usage
    created_at: float = 0.0
    revoked_at: float | None = None
    source: str = "table"  # "table" (tunegate keys) or "config"

    @property
    def all_adapters(self) -> bool:
        return ALL_ADAPTERS in self.adapters

    def allows(self, artifact_name: str) -> bool:
        """May this key use (and see) the store artifact `artifact_name` (any version)?"""
        return self.all_adapters or artifact_name in self.adapters


@dataclass(frozen=True)
class _Row:
    id: str
    salt: bytes
    digest: str
    key: ApiKey


def _check_adapters(adapters: Iterable[str]) -> tuple[str, ...]:
    out = tuple(a.strip() for a in adapters if a.strip())
    for a in out:
        if a != ALL_ADAPTERS and not KEY_NAME.match(a):
            raise KeyTableError(f"adapter name {a!r} is not a valid artifact name (or '*')")
    return out


def _check_limit(name: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise KeyTableError(f"--{name} must be >= 1 (leave it out for no limit)")
    return value


class KeyStore:
    """The key table: one small SQLite file, written by the CLI, read by gateways."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if not create and not self.path.exists():
            return None
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0)
            # Digests only, but still nobody else's business.
            self.path.chmod(0o600)
            conn.executescript(_SCHEMA)
            return conn
        # Readers never create the file: a gateway with no key table has no table keys.
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30.0)

    def create(
        self,
        name: str,
        adapters: Iterable[str],
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        admin: bool = False,
        reserved: Iterable[str] = (),
    ) -> tuple[ApiKey, str]:
        """A new key and its secret text (shown once: only its digest is stored)."""
        if not KEY_NAME.match(name):
            raise KeyTableError(f"key name must match {KEY_NAME.pattern}, got {name!r}")
        if name in set(reserved):
            raise KeyTableError(f"a key named {name!r} is configured in gateway.auth.keys")
        scope = _check_adapters(adapters)
        if not scope and not admin:
            raise KeyTableError("a key needs --adapters (names, or '*' for every adapter)")
        key_id = secrets.token_hex(_ID_HEX // 2)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        key = ApiKey(
            name=name,
            adapters=scope,
            rpm=_check_limit("rpm", rpm),
            tpm=_check_limit("tpm", tpm),
            admin=admin,
            created_at=time.time(),
        )
        conn = self._connect(create=True)
        assert conn is not None
        try:
            with conn:
                conn.execute(
                    "INSERT INTO keys (id, name, salt, digest, adapters, rpm, tpm, admin, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key_id,
                        name,
                        salt,
                        _digest(salt, secret),
                        json.dumps(list(scope)),
                        key.rpm,
                        key.tpm,
                        int(admin),
                        key.created_at,
                    ),
                )
        except sqlite3.IntegrityError:
            raise KeyTableError(
                f"a key named {name!r} exists already (revoked keys keep their name)"
            ) from None
        finally:
            conn.close()
        return key, f"{KEY_PREFIX}{key_id}-{secret}"

    def revoke(self, name: str) -> ApiKey:
        conn = self._connect(create=True)
        assert conn is not None
        try:
            with conn:
                changed = conn.execute(
                    "UPDATE keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                    (time.time(), name),
                ).rowcount
        finally:
            conn.close()
        if not changed:
            raise KeyTableError(f"no active key named {name!r}")
        return next(r.key for r in self.rows() if r.key.name == name)

    def list_keys(self, include_revoked: bool = False) -> list[ApiKey]:
        return [r.key for r in self.rows() if include_revoked or r.key.revoked_at is None]

    def rows(self) -> list[_Row]:
        conn = self._connect(create=False)
        if conn is None:
            return []
        try:
            found = conn.execute(
                "SELECT id, name, salt, digest, adapters, rpm, tpm, admin, created_at, "
                "revoked_at FROM keys ORDER BY created_at"
            ).fetchall()
        except sqlite3.OperationalError:  # created but the schema is not there yet
            return []
        finally:
            conn.close()
        return [
            _Row(
                id=row[0],
                salt=row[2],
                digest=row[3],
                key=ApiKey(
                    name=row[1],
                    adapters=tuple(json.loads(row[4])),
                    rpm=row[5],
                    tpm=row[6],
                    admin=bool(row[7]),
                    created_at=row[8],
                    revoked_at=row[9],
                ),
            )
            for row in found
        ]


class KeyRing:
    """The gateway's view of every key: the configured ones and the key table, which it
    re-reads at most every `poll_s` so that keys created or revoked while it runs take
    effect within that time, without a restart."""

    def __init__(self, table: KeyStore, configured: list[ConfiguredKey], poll_s: float) -> None:
        self.table = table
        self.poll_s = poll_s
        self._configured = [
            (
                c.sha256,
                ApiKey(c.name, c.adapters, c.rpm, c.tpm, c.admin, source="config"),
            )
            for c in configured
        ]
        self._rows: dict[str, _Row] = {}
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def _current(self) -> dict[str, _Row]:
        if time.monotonic() - self._read_at >= self.poll_s:
            async with self._lock:
                if time.monotonic() - self._read_at >= self.poll_s:
                    rows = await asyncio.to_thread(self.table.rows)
                    self._rows = {r.id: r for r in rows if r.key.revoked_at is None}
                    self._read_at = time.monotonic()
        return self._rows

    async def enabled(self) -> bool:
        """Auth is on as soon as any key exists (configured or in the table)."""
        return bool(self._configured) or bool(await self._current())

    async def verify(self, token: str) -> ApiKey | None:
        """The key `token` is, or None (unknown, revoked or malformed)."""
        rows = await self._current()
        found: ApiKey | None = None
        if token.startswith(KEY_PREFIX) and len(token) > len(KEY_PREFIX) + _ID_HEX + 1:
            key_id = token[len(KEY_PREFIX) : len(KEY_PREFIX) + _ID_HEX]
            secret = token[len(KEY_PREFIX) + _ID_HEX + 1 :]
            row = rows.get(key_id)
            if row is not None and hmac.compare_digest(_digest(row.salt, secret), row.digest):
                found = row.key
        if found is None and self._configured:
            digest = sha256_hex(token)
            for expected, key in self._configured:
                if hmac.compare_digest(digest, expected):
                    found = key
        return found
