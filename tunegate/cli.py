"""`tunegate` command line: parses arguments and calls into the packages.

Each command group lives in `tunegate/commands/<group>.py` with a `register(subparsers)`
function; handlers take `(args, settings)` and return an exit code. Heavy imports (torch,
vLLM) happen inside handlers so that `tunegate --help` and cheap commands stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from tunegate import __version__
from tunegate.config import ConfigError, load_settings

__all__ = ["CommandError", "main"]

# Command groups, in the order `tunegate --help` lists them.
_COMMANDS = [
    "model",
    "data",
    "captures",
    "tune",
    "retrain",
    "distill",
    "eval",
    "store",
    "audit",
    "monitor",
    "config",
    "serve",
    "worker",
    "keys",
    "loadtest",
    "demo",
]


class CommandError(Exception):
    """A failure to report to the user as one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunegate",
        description="Fine-tune chat models on domain data and serve them cheaply.",
    )
    parser.add_argument("--version", action="version", version=f"tunegate {__version__}")
    parser.add_argument(
        "--config", metavar="FILE", help="config file (default: $TUNEGATE_HOME/config.yaml)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        importlib.import_module(f"tunegate.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may come after options (`tune R --resume lr=1e-3`); argparse
    # stops filling a `nargs="*"` positional at the first option, so gather the rest here.
    if extra and isinstance(getattr(args, "overrides", None), list):
        unknown = [x for x in extra if x.startswith("-") or "=" not in x]
        if not unknown:
            args.overrides += extra
            extra = []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        settings = load_settings(args.config)
        code: int = args.func(args, settings)
        return code
    except KeyboardInterrupt:
        print("tunegate: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ConfigError, LookupError, ValueError, OSError, RuntimeError) as exc:
        # Expected failures (bad input, missing files, refused operations) are one line on
        # stderr; TUNEGATE_DEBUG=1 shows where they came from.
        if os.environ.get("TUNEGATE_DEBUG"):
            traceback.print_exc()
        print(f"tunegate {args.command}: error: {exc}", file=sys.stderr)
        return 1
