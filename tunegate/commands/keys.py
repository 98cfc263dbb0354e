"""`tunegate keys`: API keys of the gateway (create, list, revoke).

A running gateway picks up a created or revoked key within `gateway.auth.poll_s`. As soon as
one key exists, every `/v1/*` route of the gateway needs one.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tunegate.config import Settings

if TYPE_CHECKING:
    from gateway.auth import ApiKey, KeyStore


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "keys",
        help="create, list and revoke the gateway's API keys",
        description="API keys of the gateway, each scoped to some adapters, with optional "
        "per-minute request and token limits. A key is printed once, at creation; only a "
        "salted hash of it is stored.",
    )
    actions = parser.add_subparsers(dest="keys_action", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="create a key and print it (once)")
    create.add_argument("name", help="the key's name (shown in accounting as its key id)")
    create.add_argument(
        "--adapters",
        default="",
        help="comma-separated artifact names the key may use, or '*' for every adapter "
        "(base models are open to every key)",
    )
    create.add_argument("--rpm", type=int, help="requests per minute (default: no limit)")
    create.add_argument(
        "--tpm",
        type=int,
        help="tokens per minute, counting prompt + max_tokens (default: no limit)",
    )
    create.add_argument(
        "--admin",
        action="store_true",
        help="may call admin routes (/metrics) and see every key's usage",
    )
    create.set_defaults(func=_create)

    listing = actions.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_list)

    revoke = actions.add_parser("revoke", help="revoke a key (its name stays taken)")
    revoke.add_argument("name")
    revoke.set_defaults(func=_revoke)


def _table(settings: Settings) -> KeyStore:
    from gateway.auth import KeyStore

    auth = settings.gateway.auth
    return KeyStore(auth.keys_path or settings.home / "keys.sqlite3")


def _scope(key: ApiKey) -> dict[str, object]:
    return {"adapters": list(key.adapters), "rpm": key.rpm, "tpm": key.tpm, "admin": key.admin}


def _audit(settings: Settings, action: str, name: str, before: object, after: object) -> None:
    """Key changes go to the store's audit trail beside the artifact changes. The key table
    is another file, so a crash between the two writes can lose this entry, never a key."""
    from adapters_store import Store

    Store.open(settings).record(action, f"key:{name}", before, after)


def _create(args: argparse.Namespace, settings: Settings) -> int:
    configured = [k.name for k in settings.gateway.auth.configured()]
    key, secret = _table(settings).create(
        args.name,
        args.adapters.split(","),
        rpm=args.rpm,
        tpm=args.tpm,
        admin=args.admin,
        reserved=configured,
    )
    _audit(settings, "key.create", key.name, None, _scope(key))
    print(secret)
    print(
        f"created key {key.name!r} (adapters: {', '.join(key.adapters) or '-'}; "
        f"rpm: {key.rpm or 'unlimited'}; tpm: {key.tpm or 'unlimited'}"
        f"{'; admin' if key.admin else ''}). Save the key above now: it is not shown again.",
        file=sys.stderr,
    )
    return 0


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _list(args: argparse.Namespace, settings: Settings) -> int:
    keys = [
        *(
            (k.name, list(k.adapters), k.rpm, k.tpm, k.admin, None, None, "config")
            for k in settings.gateway.auth.configured()
        ),
        *(
            (k.name, list(k.adapters), k.rpm, k.tpm, k.admin, k.created_at, k.revoked_at, "table")
            for k in _table(settings).list_keys(include_revoked=args.all)
        ),
    ]
    if args.json:
        fields = ("name", "adapters", "rpm", "tpm", "admin", "created_at", "revoked_at", "source")
        print(json.dumps([dict(zip(fields, k, strict=True)) for k in keys], indent=2))
        return 0
    if not keys:
        print("no keys: the gateway accepts every request (auth is off)")
        return 0
    print(f"{'NAME':<24} {'ADAPTERS':<28} {'RPM':>6} {'TPM':>8} {'CREATED':<20} STATUS")
    for name, adapters, rpm, tpm, admin, created, revoked, source in keys:
        status = f"revoked {_when(revoked)}" if revoked else source.replace("table", "active")
        scope = ",".join(adapters) or "-"
        if admin:
            scope += " (admin)"
        print(
            f"{name:<24} {scope:<28} {rpm or '-':>6} {tpm or '-':>8} {_when(created):<20} {status}"
        )
    return 0


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    if args.name in {k.name for k in settings.gateway.auth.configured()}:
        raise ValueError(f"key {args.name!r} is configured in gateway.auth.keys: remove it there")
    key = _table(settings).revoke(args.name)
    _audit(settings, "key.revoke", key.name, _scope(key), None)
    print(f"revoked key {key.name!r}")
    return 0
