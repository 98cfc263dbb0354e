"""`tunegate audit`: the store's append-only record of who changed what, and when."""

from __future__ import annotations

import argparse
import dataclasses
import json

from tunegate.config import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "audit",
        help="who published, moved, promoted, rolled back or removed what (and API keys)",
        description="Every change to the store and to API keys, oldest first: time, actor "
        "(the API key or the OS user), action, subject, before and after. Entries cannot be "
        "edited or removed.",
    )
    parser.add_argument("--ref", metavar="NAME", help="only the entries about this artifact")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_audit)


def _state(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict) and set(value) == {"version"}:
        return f"@{value['version']}"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    from adapters_store import Store
    from adapters_store.catalog import parse_reference

    # `--ref telecom@prod` reads as "about telecom": entries are kept per artifact name.
    name = parse_reference(args.ref).name if args.ref else None
    entries = Store.open(settings).audit(name)
    if args.json:
        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
        return 0
    if not entries:
        print("no recorded changes")
        return 0
    rows = [
        (e.at, e.actor, e.action, e.subject, _state(e.before), _state(e.after)) for e in entries
    ]
    header = ("TIME", "ACTOR", "ACTION", "SUBJECT", "BEFORE", "AFTER")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return 0
