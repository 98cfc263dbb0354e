"""`tunegate loadtest`: drive an OpenAI-compatible URL with a scenario and write the report."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from tunegate.config import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "loadtest", help="load-test an OpenAI-compatible URL and write the cost report"
    )
    parser.add_argument("scenario", type=Path, help="scenario YAML (see loadtests/scenarios/)")
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--out", required=True, type=Path, help="folder for results and report")
    parser.add_argument(
        "--api-key", default=os.environ.get("TUNEGATE_API_KEY"), help="bearer key, if needed"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--max-error-rate",
        type=float,
        default=1.0,
        help="exit 3 when a strategy's error rate exceeds this (default 1.0: never)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override scenario keys (YAML values)"
    )
    parser.set_defaults(func=_loadtest)


def _loadtest(args: argparse.Namespace, settings: Settings) -> int:
    from loadtests.report import headline
    from loadtests.run import run_loadtest
    from loadtests.scenario import load_scenario

    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        overrides[key] = yaml.safe_load(value)
    scenario = load_scenario(args.scenario, overrides)
    results = run_loadtest(
        scenario, args.url, args.out, api_key=args.api_key, progress=not args.no_progress
    )
    for line in headline(results):
        print(line)
    print(f"report: {args.out / 'report.html'}")
    worst = 0.0
    for name, data in results["strategies"].items():
        summary = data["summary"]
        if summary["errors"]:
            print(
                f"{name}: {summary['errors']} of {summary['requests']} requests failed: "
                + ", ".join(f"{k} ×{v}" for k, v in summary["errors_by_type"].items())
            )
        worst = max(worst, summary["error_rate"] or 0.0)
    return 3 if worst > args.max_error_rate else 0
