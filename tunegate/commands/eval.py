"""`tunegate eval REF --data test.jsonl`: the artifact vs the base model, zero- and few-shot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tunegate.config import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "eval", help="evaluate a published artifact against its base model on a test set"
    )
    parser.add_argument("ref", help="store reference: name, name@3 or name@alias")
    parser.add_argument("--data", type=Path, required=True, help="test JSONL (chat format)")
    parser.add_argument(
        "--task", help="demo task for labels and the few-shot prompt (default: card)"
    )
    parser.add_argument("--few-shot-k", type=int, help="few-shot examples per label")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N examples")
    parser.add_argument(
        "--backend", choices=["auto", "vllm", "transformers"], help="generation backend"
    )
    parser.add_argument(
        "--no-update", action="store_true", help="do not write the results into the card"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_eval)


def _eval(args: argparse.Namespace, settings: Settings) -> int:
    import sys

    from tuner.evaluate import format_table
    from tuner.pipeline import evaluate_reference

    if not args.data.is_file():
        raise FileNotFoundError(f"no such file: {args.data}")
    if args.limit < 0:
        raise ValueError("--limit must be >= 0")

    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    result, ref = evaluate_reference(
        args.ref,
        args.data,
        settings.home,
        settings.tuner,
        settings.store,
        backend=args.backend,
        task_name=args.task,
        few_shot_k=args.few_shot_k,
        limit=args.limit,
        update_card=not args.no_update,
        echo=progress,
    )
    if args.json:
        print(json.dumps({"ref": ref, **result.to_dict()}, indent=2))
    else:
        print(f"{ref}: " + format_table(result))
    return 0
