"""`tunegate model`: the registered base models."""

from __future__ import annotations

import argparse
import json

from tunegate.config import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("model", help="base models: build the default, list, verify")
    cmds = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    default = cmds.add_parser(
        "default", help="build (once) and print the folder of the embedded default base model"
    )
    default.set_defaults(func=_default)

    tiny = cmds.add_parser(
        "tiny", help="build (once) and print a tiny random-weight Llama for fast tests"
    )
    tiny.set_defaults(func=_tiny)

    lst = cmds.add_parser("list", help="show registered base models")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=_list)

    verify = cmds.add_parser("verify", help="re-hash a base model's files against its manifest")
    verify.add_argument("id", help="base model id")
    verify.set_defaults(func=_verify)


def _default(args: argparse.Namespace, settings: Settings) -> int:
    from tuner.base_models import ensure_default

    print(ensure_default(settings.models_dir).path)
    return 0


def _tiny(args: argparse.Namespace, settings: Settings) -> int:
    from tuner.base_models import ensure_tiny

    print(ensure_tiny(settings.models_dir).path)
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from adapters_store.bases import BaseRegistry

    bases = BaseRegistry(settings.models_dir).list()
    if args.json:
        rows = [
            {
                "id": b.id,
                "architecture": b.architecture,
                "path": str(b.path),
                "source": b.source,
                "size_bytes": b.size_bytes,
                "default": b.id == settings.default_base,
            }
            for b in bases
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not bases:
        print(
            f"no base models registered under {settings.models_dir}; run `tunegate model default`"
        )
        return 0
    width = max(len(b.id) for b in bases)
    for b in bases:
        mark = "*" if b.id == settings.default_base else " "
        size = b.size_bytes / 2**20
        print(f"{mark} {b.id:<{width}}  {b.architecture:<20} {size:8.1f} MiB  {b.path}")
    return 0


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from adapters_store.bases import BaseRegistry

    problems = BaseRegistry(settings.models_dir).get(args.id).verify()
    for p in problems:
        print(f"{args.id}: {p}")
    if not problems:
        print(f"{args.id}: ok")
    return 1 if problems else 0
