"""`tunegate data`: validate chat fine-tuning JSONL, write a demo task's data."""

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
