"""`tunegate data`: validate chat fine-tuning JSONL, write a demo task's data, turn stored
chat completions into training data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tunegate.config import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("data", help="fine-tuning data: validate a JSONL file, demo tasks")
    cmds = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    validate = cmds.add_parser(
        "validate", help="check a chat JSONL file line by line (OpenAI's categories)"
    )
    validate.add_argument("file", type=Path, help="JSONL file, one {'messages': [...]} per line")
    validate.add_argument("--base", help="base model whose tokenizer measures length")
    validate.add_argument("--max-length", type=int, help="token limit (default: tuner.max_length)")
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.set_defaults(func=_validate)

    demo = cmds.add_parser("demo", help="write train/valid/test.jsonl of a demo task")
    demo.add_argument("task", help="telecom-routing, retail-tagging or manufacturing-triage")
    demo.add_argument("--out", type=Path, required=True, help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    for split in ("train", "valid", "test"):
        demo.add_argument(f"--{split}", type=int, metavar="N", help=f"examples in {split}.jsonl")
    demo.add_argument("--force", action="store_true", help="overwrite existing files")
    demo.set_defaults(func=_demo)

    tasks = cmds.add_parser("tasks", help="list the demo tasks, their labels and prompt")
    tasks.set_defaults(func=_tasks)

    stored = cmds.add_parser(
        "from-stored",
        help="stored chat completions (store: true) -> chat fine-tuning JSONL",
        description="Write the chat completions sent with `store: true` whose metadata has "
        "every KEY=VALUE given (and that match --model / --since) as a chat fine-tuning JSONL "
        "file: the messages as sent, the model's answer as the assistant turn.",
    )
    stored.add_argument(
        "--metadata",
        action="append",
        required=True,
        metavar="KEY=VALUE",
        help="keep completions stored with this metadata pair (repeat: all must match)",
    )
    stored.add_argument("--model", metavar="REF", help="only those asked of / answered by REF")
    stored.add_argument("--since", metavar="TIME", help="only those since (unix or ISO time)")
    stored.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    stored.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    stored.set_defaults(func=_from_stored)


def _validate(args: argparse.Namespace, settings: Settings) -> int:
    from transformers import AutoTokenizer

    from tuner.data import validate_file
    from tuner.train import ensure_base

    base = ensure_base(settings.models_dir, args.base or settings.default_base)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    context = int(base.hf_config().get("max_position_embeddings") or settings.tuner.max_length)
    limit = min(args.max_length or settings.tuner.max_length, context)
    if not args.file.is_file():
        raise FileNotFoundError(f"no such file: {args.file}")
    report = validate_file(args.file, tokenizer, limit)
    if args.json:
        print(
            json.dumps(
                {
                    "file": str(args.file),
                    "examples": len(report.records),
                    "ok": report.ok,
                    "problems": [
                        {
                            "line": p.line,
                            "category": p.category,
                            "message": p.message,
                            "severity": p.severity,
                        }
                        for p in report.problems
                    ],
                },
                indent=2,
            )
        )
    else:
        for problem in report.problems:
            print(problem)
        verdict = "ok" if report.ok else f"{len(report.errors)} error(s)"
        print(
            f"{args.file}: {len(report.records)} valid example(s), {verdict}, "
            f"{len(report.warnings)} warning(s) (limit {limit} tokens, {base.id} template)"
        )
    return 0 if report.ok else 1


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from tuner.tasks import get_task

    task = get_task(args.task)
    sizes = {s: getattr(args, s) for s in ("train", "valid", "test") if getattr(args, s)}
    paths = task.write_demo(args.out, sizes=sizes, seed=args.seed, overwrite=args.force)  # type: ignore[arg-type]
    for split, path in paths.items():
        lines = sum(1 for _ in path.open())
        print(f"{split}: {path} ({lines} examples)")
    return 0


def _tasks(args: argparse.Namespace, settings: Settings) -> int:
    from tuner.tasks import TASKS

    for task in TASKS.values():
        print(f"{task.name}: {', '.join(task.labels)}")
        print(f"  system prompt: {task.system_prompt}")
    return 0


def _pairs(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--metadata expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _from_stored(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.capture import CaptureStore, captures_path
    from gateway.capture.examples import stored_examples
    from gateway.errors import APIError
    from gateway.usage.serving import parse_time

    metadata = _pairs(args.metadata)
    try:
        since = parse_time(args.since, "--since")
    except APIError as exc:
        raise ValueError(exc.message) from None
    if args.out.exists() and not args.force:
        raise FileExistsError(f"{args.out} exists; pass --force to overwrite it")
    path = captures_path(settings)
    if not path.is_file():
        raise LookupError(f"no stored chat completions: {path} does not exist")
    store = CaptureStore(path)
    try:
        found = stored_examples(store, metadata, args.model, since)
    finally:
        store.close()
    wanted = " ".join(f"{k}={v}" for k, v in metadata.items())
    if args.model:
        wanted += f", model {args.model}"
    if since is not None:
        wanted += f", since {args.since}"
    if not found.examples:
        raise LookupError(f"no stored chat completion matches metadata {wanted}; nothing written")
    _write_jsonl(args.out, found.examples)
    skipped = ", ".join(f"{n} skipped: {why}" for why, n in found.skipped.items())
    print(
        f"{args.out}: {len(found.examples)} example(s) from stored completions ({wanted})"
        + (f"; {skipped}" if skipped else "")
    )
    return 0


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    """All or nothing: a temp file beside `path`, renamed over it once complete."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
