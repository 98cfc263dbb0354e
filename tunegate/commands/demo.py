"""`tunegate demo`: the whole story end to end on the default model (not built yet)."""

from __future__ import annotations

import argparse
import sys

from tunegate.config import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("demo", help="train, serve, load-test and report on the default model")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    print(
        "tunegate demo: not yet: it lands with the loadtests issue (train an adapter, serve it, "
        "load-test it against the base model with a few-shot prompt, write the cost report)",
        file=sys.stderr,
    )
    return 2
