"""`tunegate store`: publish, list, show, alias (and canary), promote, roll back, remove and
verify artifacts. Every change lands in the audit trail (`tunegate audit`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunegate.config import Settings

if TYPE_CHECKING:
    from adapters_store import ArtifactVersion, Store


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("store", help="the catalog of adapters and models: publish, alias")
    cmds = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    publish = cmds.add_parser(
        "publish", help="validate and publish a folder as the next version; prints NAME@VERSION"
    )
    publish.add_argument("path", type=Path, help="PEFT adapter folder or HF model folder")
    publish.add_argument("--name", required=True, help="artifact name, e.g. telecom-router")
    publish.add_argument("--kind", choices=("lora", "model"), default="lora")
    publish.add_argument(
        "--base", help="registered base model id (default: from adapter_config/tokenizer)"
    )
    publish.add_argument(
        "--card", type=Path, metavar="FILE", help="JSON file of card fields (metrics, recipe...)"
    )
    publish.set_defaults(func=_publish)

    lst = cmds.add_parser("list", help="every published version, oldest first")
    lst.add_argument("name", nargs="?", help="only the versions of this artifact")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=_list)

    show = cmds.add_parser("show", help="one version and its card (NAME, NAME@3, NAME@prod)")
    show.add_argument("ref")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_show)

    alias = cmds.add_parser("alias", help="point NAME@ALIAS at REF; prints the previous target")
    alias.add_argument("ref", help="the version to point at, e.g. telecom@3")
    alias.add_argument("alias", help="alias name, e.g. prod")
    alias.add_argument(
        "--canary",
        type=int,
        metavar="PERCENT",
        help="keep the alias's target and send this share (1-100) of its callers to REF",
    )
    alias.set_defaults(func=_alias)

    promote = cmds.add_parser("promote", help="make the canary of NAME@ALIAS its target")
    promote.add_argument("ref", help="NAME (meaning NAME@prod) or NAME@ALIAS")
    promote.set_defaults(func=_promote)

    rollback = cmds.add_parser(
        "rollback",
        help="point NAME@ALIAS back at its previous target (during a canary: end the canary)",
    )
    rollback.add_argument("ref", help="NAME (meaning NAME@prod) or NAME@ALIAS")
    rollback.set_defaults(func=_rollback)

    remove = cmds.add_parser("remove", help="remove one version (refused while aliased)")
    remove.add_argument("ref")
    remove.add_argument(
        "--force", action="store_true", help="also drop the aliases that point at it"
    )
    remove.set_defaults(func=_remove)

    verify = cmds.add_parser("verify", help="re-hash files; non-zero exit if any changed")
    verify.add_argument("ref", nargs="?", help="one version (default: all)")
    verify.set_defaults(func=_verify)


def _open(settings: Settings) -> Store:
    from adapters_store import Store

    return Store.open(settings)


def _as_json(v: ArtifactVersion) -> dict[str, Any]:
    row = dataclasses.asdict(v)
    row["path"] = str(v.path)
    row["aliases"] = list(v.aliases)
    row["ref"] = v.ref
    return row


def _publish(args: argparse.Namespace, settings: Settings) -> int:
    card = None
    if args.card is not None:
        try:
            card = json.loads(args.card.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{args.card}: not valid JSON ({exc})") from exc
    published = _open(settings).publish(
        args.path, args.name, kind=args.kind, base=args.base, card=card
    )
    print(published.ref)
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    versions = _open(settings).list(args.name)
    if args.json:
        print(json.dumps([_as_json(v) for v in versions], indent=2))
        return 0
    if not versions:
        print("the store is empty; publish with `tunegate store publish PATH --name NAME`")
        return 0
    rows = [
        (
            v.ref,
            v.kind,
            v.base,
            str(v.card.get("rank", "-")) if v.kind == "lora" else "-",
            ",".join(v.aliases) or "-",
            v.created_at,
        )
        for v in versions
    ]
    header = ("REF", "KIND", "BASE", "RANK", "ALIASES", "CREATED")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    store = _open(settings)
    v = store.resolve(args.ref)
    canary = store.canary(args.ref)
    if args.json:
        row = _as_json(v)
        if canary is not None:
            row["canary"] = {"ref": canary.canary.ref, "percent": canary.percent}
        print(json.dumps(row, indent=2))
        return 0
    print(f"{v.ref}  ({v.kind} on {v.base}, uid {v.uid})")
    print(f"path:       {v.path}")
    print(f"created_at: {v.created_at}")
    print(f"aliases:    {', '.join(v.aliases) or '-'}")
    if canary is not None:
        print(f"canary:     {canary.canary.ref} ({canary.percent}% of {canary.ref}'s callers)")
    card = {k: val for k, val in v.card.items() if k not in ("files", "base", "kind", "created_at")}
    for key, value in sorted(card.items()):
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        print(f"{key + ':':<16}{text}")
    print("files:")
    for rel, digest in sorted(v.files.items()):
        print(f"  {digest}  {rel}")
    return 0


def _alias(args: argparse.Namespace, settings: Settings) -> int:
    store = _open(settings)
    if args.canary is not None:
        canary = store.set_canary(args.ref, args.alias, args.canary)
        print(
            f"{canary.ref} -> {canary.stable.ref}, canary {canary.canary.ref} "
            f"for {canary.percent}% of callers"
        )
        return 0
    previous = store.set_alias(args.ref, args.alias)
    target = store.resolve(args.ref)
    was = previous.ref if previous is not None else "none"
    print(f"{target.name}@{args.alias} -> {target.ref} (previous: {was})")
    return 0


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    target = _open(settings).promote(args.ref)
    alias = args.ref if "@" in args.ref else f"{args.ref}@prod"
    print(f"{alias} -> {target.ref}")
    return 0


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    target = _open(settings).rollback_alias(args.ref)
    alias = args.ref if "@" in args.ref else f"{args.ref}@prod"
    print(f"{alias} -> {target.ref}")
    return 0


def _remove(args: argparse.Namespace, settings: Settings) -> int:
    removed = _open(settings).remove(args.ref, force=args.force)
    print(f"removed {removed.ref}")
    return 0


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    store = _open(settings)
    problems = store.verify(args.ref)
    for line in problems:
        print(line)
    if problems:
        return 1
    count = 1 if args.ref else len(store.list())
    print(f"ok: {count} version{'s' if count != 1 else ''} verified")
    return 0
