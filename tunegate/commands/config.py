"""`tunegate config`: print the effective configuration and where each value came from."""

from __future__ import annotations

import argparse
import json

from tunegate.config import Settings, as_dict, describe


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "config", help="print the effective configuration (defaults < file < TUNEGATE_* env)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_show)


def _show(args: argparse.Namespace, settings: Settings) -> int:
    if args.json:
        print(json.dumps(as_dict(settings), indent=2))
        return 0
    for name, value, source, doc in describe(settings):
        print(f"{name} = {json.dumps(value)}    # {source}" + (f"; {doc}" if doc else ""))
    return 0
