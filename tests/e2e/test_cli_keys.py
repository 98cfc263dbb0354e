"""`tunegate keys` as an operator runs it: subprocesses of the CLI on a fresh home."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.auth import KeyRing, KeyStore
from tests.e2e.test_cli_store import ok, refused


def test_keys_lifecycle(home: Path) -> None:
    secret = ok("keys", "create", "acme", "--adapters", "alpha,beta", "--rpm", "60").strip()
    assert secret.startswith("sk-tg-") and len(secret.splitlines()) == 1
    assert secret not in (home / "keys.sqlite3").read_bytes().decode("latin-1")
    listed = json.loads(ok("keys", "list", "--json"))
    assert [(k["name"], k["adapters"], k["rpm"], k["tpm"]) for k in listed] == [
        ("acme", ["alpha", "beta"], 60, None)
    ]
    assert "acme" in ok("keys", "list") and secret not in ok("keys", "list")
    # The printed key is the one the gateway accepts.
    ring = KeyRing(KeyStore(home / "keys.sqlite3"), [], poll_s=0.01)
    found = asyncio.run(ring.verify(secret))
    assert found is not None and found.name == "acme"

    assert "exists already" in refused("keys", "create", "acme", "--adapters", "x")
    assert "key name" in refused("keys", "create", "Not Valid", "--adapters", "x")
    assert "needs --adapters" in refused("keys", "create", "empty")
    assert "rpm" in refused("keys", "create", "zero", "--adapters", "x", "--rpm", "0")

    assert "revoked" in ok("keys", "revoke", "acme")
    assert json.loads(ok("keys", "list", "--json")) == []
    assert json.loads(ok("keys", "list", "--all", "--json"))[0]["revoked_at"] is not None
    assert asyncio.run(KeyRing(KeyStore(home / "keys.sqlite3"), [], 0.01).verify(secret)) is None
    assert "no active key" in refused("keys", "revoke", "acme")
