"""`tunegate captures`: the prompts and answers the gateway kept (`gateway.capture`, and
chat completions sent with `store: true`): list, show, remove per request id, purge."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tunegate.config import Settings

if TYPE_CHECKING:
    from gateway.capture import CaptureStore

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "captures",
        help="captured prompts and answers: list, show, remove per request id, purge",
        description="What the gateway captured (per artifact, see `gateway.capture`, and "
        "every chat completion sent with `store: true`), until each capture's retention ends.",
    )
    cmds = parser.add_subparsers(dest="captures_command", metavar="ACTION", required=True)

    listing = cmds.add_parser("list", help="live captures, oldest first")
    listing.add_argument("--model", metavar="REF", help="only those asked of / answered by REF")
    listing.add_argument("--stored", action="store_true", help="only `store: true` completions")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_list)

    show = cmds.add_parser("show", help="one capture in full (JSON)")
    show.add_argument("request_id", help="the request's x-request-id")
    show.set_defaults(func=_show)

    rm = cmds.add_parser("rm", help="remove captures now, by request id")
    rm.add_argument("request_ids", nargs="+", metavar="REQUEST_ID", help="x-request-id values")
    rm.set_defaults(func=_rm)

    purge = cmds.add_parser("purge", help="delete every capture past its retention now")
    purge.set_defaults(func=_purge)


def _open(settings: Settings) -> CaptureStore:
    from gateway.capture import CaptureStore, captures_path

    path = captures_path(settings)
    if not path.is_file():
        raise LookupError(f"nothing was captured: {path} does not exist")
    return CaptureStore(path)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _list(args: argparse.Namespace, settings: Settings) -> int:
    store = _open(settings)
    try:
        found = store.find(stored=True if args.stored else None, model=args.model)
    finally:
        store.close()
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in found], indent=2))
        return 0
    if not found:
        print("no captures")
        return 0
    header = ("CREATED", "REQUEST_ID", "ARTIFACT", "KEY", "STORED", "EXPIRES", "METADATA")
    rows = [
        (
            _iso(c.created_at),
            c.request_id,
            c.artifact,
            c.key_id or "-",
            "yes" if c.stored else "no",
            _iso(c.expires_at),
            json.dumps(dict(c.metadata), sort_keys=True) if c.metadata else "-",
        )
        for c in found
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    store = _open(settings)
    try:
        capture = store.get(args.request_id)
    finally:
        store.close()
    if capture is None:
        raise LookupError(f"no capture of request {args.request_id!r} (or it has expired)")
    print(json.dumps(dataclasses.asdict(capture), indent=2, ensure_ascii=False))
    return 0


def _rm(args: argparse.Namespace, settings: Settings) -> int:
    store = _open(settings)
    try:
        # All or none: a typo in one id must not leave the user unsure what went.
        unknown = [r for r in args.request_ids if store.get(r, now=0.0) is None]
        if unknown:
            raise LookupError(f"no capture of request(s) {', '.join(unknown)}; nothing removed")
        for request_id in args.request_ids:
            store.delete(request_id)
    finally:
        store.close()
    print(f"removed {len(args.request_ids)} capture(s)")
    return 0


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    store = _open(settings)
    try:
        deleted = store.purge(time.time())
    finally:
        store.close()
    print(f"deleted {deleted} expired capture(s)")
    return 0
