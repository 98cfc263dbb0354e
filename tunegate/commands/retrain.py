"""`tunegate retrain REF [--from-feedback] [key=value ...]`: a new version from the artifact's
own recipe and data (plus corrected feedback), published under the alias `canary` only when
it is not worse than the current version on the held-out test set (see tuner.retrain).

Exit status: 0 published (or not worse with publish=false), 3 worse (nothing published),
1 refused (bad reference, missing recipe or data, invalid examples: nothing trained)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import TYPE_CHECKING, Any

from tunegate.config import Settings

if TYPE_CHECKING:
    from tuner.retrain import FeedbackExample

__all__ = ["WORSE_EXIT", "format_report", "register"]

WORSE_EXIT = 3


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "retrain",
        help="retrain an artifact with its own recipe (+ corrected feedback); canary if not worse",
        description="Trains a new version of REF's artifact from the recipe and training data "
        "on its card (overrides are recipe keys, as for `tunegate tune`), evaluates it beside "
        "REF's version on the held-out test set and publishes it under NAME@canary only if no "
        "metric (accuracy, macro-F1) drops by more than --tolerance. A worse version is not "
        "published (exit 3); its run folder keeps it.",
    )
    parser.add_argument("ref", metavar="REF", help="NAME, NAME@VERSION or NAME@ALIAS (e.g. @prod)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    parser.add_argument(
        "--backend", choices=["auto", "vllm", "transformers"], help="generation for evaluation"
    )
    parser.add_argument(
        "--from-feedback",
        action="store_true",
        help="add the captured requests of NAME that got a corrected answer (POST /v1/feedback)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        metavar="X",
        help="largest drop of a metric (absolute, 0..1) still counted as not worse (default 0)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=_retrain)


def _feedback(settings: Settings, name: str) -> tuple[list[FeedbackExample], dict[str, int]]:
    from gateway.app import accounting_path
    from gateway.capture import CaptureStore, captures_path
    from gateway.capture.examples import retraining_examples
    from tuner.retrain import FeedbackExample

    path = captures_path(settings)
    if not path.is_file():
        return [], {}
    store = CaptureStore(path)
    try:
        found = retraining_examples(store, accounting_path(settings), name)
    finally:
        store.close()
    examples = [
        FeedbackExample(request_id, example["messages"])
        for request_id, example in zip(found.request_ids, found.examples, strict=True)
    ]
    return examples, found.skipped


def _retrain(args: argparse.Namespace, settings: Settings) -> int:
    from adapters_store import Store
    from tuner.retrain import pipeline_fit, retrain

    # With --json, stdout carries the report only; progress goes to stderr.
    out = sys.stderr if args.json else sys.stdout

    def echo(text: str) -> None:
        print(text, file=out, flush=True)

    with contextlib.ExitStack() as stack:
        store = Store.open(settings)
        stack.callback(store.close)
        if args.json:
            # transformers' Trainer prints its log lines to stdout: send them to stderr.
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        feedback = None
        if args.from_feedback:
            name = store.resolve(args.ref).name
            feedback, skipped = _feedback(settings, name)
            for why, count in skipped.items():
                echo(f"feedback: {count} correction(s) skipped: {why}")
        outcome = retrain(
            store,
            args.ref,
            settings.home,
            pipeline_fit(settings.home, settings.tuner, args.backend),
            overrides=args.overrides,
            feedback=feedback,
            tolerance=args.tolerance,
            echo=echo,
        )
    report = outcome.to_dict()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if outcome.decision.not_worse else WORSE_EXIT


def format_report(report: dict[str, Any]) -> str:
    metrics, delta = report["metrics"], report["delta"]
    rows = [
        f"{m}: {metrics['current'][m]:.3f} -> {metrics['new'][m]:.3f} ({delta[m]:+.3f})"
        for m in delta
    ]
    data = report["data"]
    lines = [
        f"retrained {report['current']}: {data['original_examples']} original + "
        f"{data['feedback_examples']} feedback example(s), evaluated on {data['test_file']}",
        *(f"  {row}" for row in rows),
    ]
    if report["decision"] == "published":
        lines.append(
            f"not worse (tolerance {report['tolerance']}): published {report['new']} as "
            f"{report['new'].split('@')[0]}@{report['alias']}"
        )
    elif report["decision"] == "not_published":
        lines.append("not worse, but the recipe says publish=false: nothing published")
    else:
        lines.append(
            f"worse than {report['current']} (tolerance {report['tolerance']}): nothing "
            f"published; the trained version stays in {report['output_dir']}"
        )
    return "\n".join(lines)
