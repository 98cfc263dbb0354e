"""`tunegate monitor REF`: per version and time window, what the gateway served and how
far its traffic has drifted from the training data (see gateway.monitoring)."""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

from tunegate.config import Settings

__all__ = ["parse_duration", "parse_since", "register"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "monitor",
        help="per-version traffic, latency, cost, feedback and drift over time windows",
        description="Reads the gateway's accounting database. REF is NAME (every version), "
        "NAME@3 or NAME@ALIAS (its version, and its canary while one runs). Drift compares "
        "the answers (label tasks) and the prompts' length and vocabulary (every task) with "
        "the training data described in the artifact's card; thresholds are gateway.monitor.*.",
    )
    parser.add_argument("ref", metavar="REF", help="NAME, NAME@VERSION or NAME@ALIAS")
    parser.add_argument(
        "--since",
        default="24h",
        help="start: a duration before now (30m, 6h, 2d) or an ISO time (default 24h)",
    )
    parser.add_argument(
        "--window", help="window length, e.g. 1h or 15m (default gateway.monitor.window_s)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_monitor)


def parse_duration(text: str) -> float:
    """Seconds in `90s`, `15m`, `1h`, `2d`, `1w`."""
    m = _DURATION.fullmatch(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"invalid duration {text!r}: expected a number and s, m, h, d or w")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_since(text: str, now: float) -> float:
    """A duration before `now`, or an ISO 8601 time (UTC when it names no zone)."""
    if _DURATION.fullmatch(text.strip()):
        return now - parse_duration(text)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"invalid --since {text!r}: expected a duration (6h) or an ISO time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when.timestamp() >= now:
        raise ValueError(f"--since {text!r} is not in the past")
    return when.timestamp()


def _monitor(args: argparse.Namespace, settings: Settings) -> int:
    from adapters_store import Store
    from adapters_store.catalog import parse_reference
    from adapters_store.profile import TrainingProfile
    from gateway.app import accounting_path
    from gateway.monitoring.report import monitor_report
    from gateway.monitoring.windows import Selector
    from tuner.profile import profile_from_card

    now = time.time()
    since = parse_since(args.since, now)
    window_s = parse_duration(args.window) if args.window else settings.gateway.monitor.window_s
    ref = parse_reference(args.ref)
    store = Store.open(settings)
    if ref.version is not None:
        # Records outlive a removed version: its figures are still shown.
        selector = Selector(artifacts=(str(ref),))
    elif ref.alias is not None:
        version = store.resolve(ref)
        canary = store.canary(ref)
        artifacts = {version.ref} | ({canary.canary.ref} if canary is not None else set())
        selector = Selector(artifacts=tuple(sorted(artifacts)))
    else:
        selector = Selector(name=ref.name)

    cache: dict[str, TrainingProfile | None] = {}

    def profiles(artifact: str) -> TrainingProfile | None:
        if artifact not in cache:
            try:
                card = store.resolve(artifact).card
            except LookupError:
                cache[artifact] = None
            else:
                cache[artifact] = profile_from_card(card, settings.home)
        return cache[artifact]

    report = monitor_report(
        accounting_path(settings),
        selector,
        profiles,
        settings.gateway.monitor,
        since=since,
        until=now,
        window_s=window_s,
    )
    report = {"ref": args.ref, **report}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _drift_cell(drift: dict[str, Any] | None) -> str:
    if drift is None:
        return "no profile"
    parts = []
    if "labels" in drift:
        parts.append(f"labels JS {_fmt(drift['labels']['divergence'], '.3f')}")
    prompts = drift["prompts"]
    parts.append(f"len JS {_fmt(prompts['length_divergence'], '.3f')}")
    parts.append(f"oov {_fmt(prompts['oov_shift'], '+.3f')}")
    return ", ".join(parts) + (" DRIFT" if drift["flagged"] else "")


def _print(report: dict[str, Any]) -> None:
    print(
        f"{report['ref']}: {report['since']} .. {report['until']}, windows of "
        f"{report['window_s']:g} s"
    )
    if not report["versions"]:
        print("no requests in this range")
        return
    header = (
        "WINDOW START",
        "REQS",
        "ERR",
        "PROMPT",
        "COMPL",
        "P50 MS",
        "P95 MS",
        "COST $",
        "RATING",
        "CORR",
        "DRIFT",
    )
    for version in report["versions"]:
        print(f"\n{version['artifact']} ({version['task'] or 'no training profile'})")
        rows = []
        for label, w in [
            *((w["start"], w) for w in version["windows"]),
            ("total", version["total"]),
        ]:
            fb = w["feedback"]
            rating = f"{fb['mean_rating']:+.2f} ({fb['ratings']})" if fb["ratings"] else "-"
            rows.append(
                (
                    label,
                    str(w["requests"]),
                    str(w["errors"]),
                    str(w["prompt_tokens"]),
                    str(w["completion_tokens"]),
                    _fmt(w["latency_ms_p50"], ".0f"),
                    _fmt(w["latency_ms_p95"], ".0f"),
                    f"{w['cost_usd']:.6f}",
                    rating,
                    str(fb["corrections"]),
                    _drift_cell(w["drift"]),
                )
            )
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
        for row in [header, *rows]:
            cells = [c.ljust(wd) for c, wd in zip(row[:-1], widths, strict=True)]
            print("  ".join([*cells, row[-1]]).rstrip())
        labels = version["total"]["drift"] and version["total"]["drift"].get("labels")
        if labels and labels["answers"]:
            mix = ", ".join(
                f"{k} {labels['shares'].get(k, 0):.2f}/{v:.2f}"
                for k, v in labels["expected"].items()
            )
            print(f"answers vs training (share live/train): {mix}")
