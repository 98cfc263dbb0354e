"""`tunegate demo`: train, serve, load-test and report on the default model."""

from __future__ import annotations

import argparse
from pathlib import Path

from tunegate.config import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "demo",
        help="the whole story: train an adapter, serve it, load-test it against the base model",
        description="Generates the task's data, trains and publishes its LoRA adapter (or "
        "reuses it), starts the gateway, load-tests base + few-shot against adapter + short "
        "prompt, and writes the cost report.",
    )
    parser.add_argument("--task", default="telecom-routing", help="demo task (recipes/<task>/)")
    parser.add_argument("--out", type=Path, help="report folder (default $TUNEGATE_HOME/demo/TASK)")
    parser.add_argument("--requests", type=int, default=48, help="measured requests per strategy")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--few-shot-k", type=int, default=16, help="examples in the long prompt")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides for the LoRA recipe"
    )
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from tunegate.demo import DemoOptions, run_demo

    if args.requests < 1 or args.concurrency < 1 or args.few_shot_k < 1:
        raise ValueError("--requests, --concurrency and --few-shot-k must be >= 1")
    options = DemoOptions(
        task=args.task,
        out=args.out,
        requests=args.requests,
        concurrency=args.concurrency,
        few_shot_k=args.few_shot_k,
        overrides=args.overrides,
    )
    run_demo(settings, options)
    return 0
