"""report.md and report.html (with PNG plots) from a results dict; opens offline."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

__all__ = ["cost_table", "headline", "write_reports"]


def _fmt(value: Any, digits: int = 1, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    if pct:
        return f"{value * 100:.{digits}f}%"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def cost_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per strategy, plus the hosted generic model when the scenario prices one."""
    rows = []
    for name, data in results["strategies"].items():
        s, strat = data["summary"], data["strategy"]
        rows.append(
            {
                "strategy": name,
                "model": strat["model"],
                "prompt": strat["prompt"] + (f" (k={strat['k']})" if strat["k"] else ""),
                "prompt_tokens": s["prompt_tokens_per_request"],
                "cl100k_prompt_tokens": s["cl100k_prompt_tokens_per_request"],
                "completion_tokens": s["completion_tokens_per_request"],
                "accuracy": s["accuracy"],
                "p50_ttft_ms": s["ttft_ms"]["p50"],
                "p50_e2e_ms": s["e2e_ms"]["p50"],
                "p99_e2e_ms": s["e2e_ms"]["p99"],
                "requests_per_s": s["requests_per_s"],
                "error_rate": s["error_rate"],
                "usd_per_1k": s["self_hosted_usd_per_1k"],
                "where": "self-hosted",
            }
        )
    hosted = results.get("hosted")
    if hosted:
        rows.append(
            {
                "strategy": f"hosted {hosted['model']}",
                "model": hosted["model"],
                "prompt": f"as {hosted['priced_from']}",
                "prompt_tokens": None,
                "cl100k_prompt_tokens": hosted["prompt_tokens_per_request"],
                "completion_tokens": hosted["completion_tokens_per_request"],
                "accuracy": None,
                "p50_ttft_ms": None,
                "p50_e2e_ms": None,
                "p99_e2e_ms": None,
                "requests_per_s": None,
                "error_rate": None,
                "usd_per_1k": hosted["usd_per_1k"],
                "where": "hosted (list price)",
            }
        )
    return rows


def headline(results: dict[str, Any]) -> list[str]:
    """The few lines `make demo` prints: tokens saved, accuracy, $ per 1k, p50 latency."""
    lines = []
    base_name = (results.get("hosted") or {}).get("priced_from")
    base = results["strategies"].get(base_name, {}).get("summary") if base_name else None
    for row in cost_table(results):
        tokens = row["prompt_tokens"] or row["cl100k_prompt_tokens"]
        latency = row["p50_e2e_ms"]
        line = (
            f"{row['strategy']:<24} accuracy {_fmt(row['accuracy'], 1, pct=True):>6}  "
            f"prompt {_fmt(tokens, 0):>5} tok/req  "
            f"${_fmt(row['usd_per_1k'], 4)} per 1k requests  "
            f"p50 {'n/a' if latency is None else f'{latency:,.0f} ms'}"
        )
        if (
            base
            and row["where"] == "self-hosted"
            and row["strategy"] != base_name
            and row["prompt_tokens"]
            and base["prompt_tokens_per_request"]
        ):
            saved = 1 - row["prompt_tokens"] / base["prompt_tokens_per_request"]
            line += f"  prompt tokens {_fmt(saved, 0, pct=True)} fewer than {base_name}"
        lines.append(line)
    return lines


_COLUMNS = [
    ("strategy", "strategy", None),
    ("model", "model", None),
    ("prompt", "prompt", None),
    ("prompt_tokens", "prompt tok/req (server)", 1),
    ("cl100k_prompt_tokens", "prompt tok/req (cl100k)", 1),
    ("completion_tokens", "completion tok/req", 1),
    ("accuracy", "accuracy", "pct"),
    ("p50_ttft_ms", "p50 TTFT ms", 0),
    ("p50_e2e_ms", "p50 E2E ms", 0),
    ("p99_e2e_ms", "p99 E2E ms", 0),
    ("requests_per_s", "req/s", 2),
    ("error_rate", "errors", "pct"),
    ("usd_per_1k", "$ per 1k req", 4),
]


def _cell(row: dict[str, Any], key: str, digits: Any) -> str:
    if digits == "pct":
        return _fmt(row[key], 1, pct=True)
    if digits is None:
        return str(row[key])
    return _fmt(row[key], digits)


def _assumptions(results: dict[str, Any]) -> list[str]:
    p, st = results["pricing"], results["settings"]
    shape = st["shape"]
    load = (
        f"closed loop, {shape['concurrency']} requests in flight"
        if shape["kind"] == "closed"
        else f"open loop, Poisson arrivals at {shape['rate']} req/s"
    )
    lines = [
        f"Load: {load}; {st['requests']} measured requests per strategy after "
        f"{st['warmup']} warm-up, max_tokens {st['max_tokens']}, temperature "
        f"{st['temperature']}, {'streaming' if st['stream'] else 'non-streaming'}; "
        f"strategies run one after another against {results['url']}.",
        f"Self-hosted cost: the machine costs ${p['gpu_hour_usd']}/hour and serves only this "
        "traffic, so a strategy's requests cost that rate × its measured wall time / its "
        "answered requests (the throughput measured at this load, not a peak figure).",
        "Prompt tokens (server) come from the server's `usage`; cl100k counts use OpenAI's "
        "cl100k_base encoding with its chat framing (3 tokens per message + 3 per reply).",
        "Accuracy: an answer is right when it equals the expected label up to case, "
        "punctuation and whitespace (first line only).",
    ]
    hosted = results.get("hosted")
    if hosted:
        lines.append(
            f"Hosted row: {hosted['model']} at ${p['hosted_input_per_mtok']}/M input and "
            f"${p['hosted_output_per_mtok']}/M output tokens, billed on the prompts of "
            f"`{hosted['priced_from']}` and the answers that strategy got here; its latency and "
            "accuracy were not measured (no request was sent to it)."
        )
    return lines


def _markdown(results: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    out = [
        f"# Load test: {results['scenario']}",
        "",
        f"Started {results['started_at']} "
        f"against {results['url']} on {results['machine']['platform']}.",
        "",
    ]
    out += ["| " + " | ".join(h for _, h, _ in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in rows:
        out.append("| " + " | ".join(_cell(row, k, d) for k, _, d in _COLUMNS) + " |")
    out += ["", "## Headline", "", *[f"- {line.strip()}" for line in headline(results)]]
    out += ["", "## Errors", ""]
    for name, data in results["strategies"].items():
        errs = data["summary"]["errors_by_type"]
        out.append(f"- {name}: " + (", ".join(f"{k}: {v}" for k, v in errs.items()) or "none"))
    out += ["", "## Assumptions", "", *[f"- {a}" for a in _assumptions(results)], ""]
    return "\n".join(out)


def _plots(results: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["strategies"])
    files = []

    fig, ax = plt.subplots(figsize=(7, 3.5))
    data = [
        [r["e2e_ms"] for r in results["strategies"][n]["requests"] if r["ok"] and not r["warmup"]]
        for n in names
    ]
    ax.boxplot([d or [0.0] for d in data], tick_labels=names, showfliers=True)
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("Latency per request")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    files.append("latency.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [r["strategy"] for r in rows]
    prompt = [r["prompt_tokens"] or r["cl100k_prompt_tokens"] or 0 for r in rows]
    completion = [r["completion_tokens"] or 0 for r in rows]
    ax.bar(labels, prompt, label="prompt")
    ax.bar(labels, completion, bottom=prompt, label="completion")
    ax.set_ylabel("tokens per request")
    ax.set_title("Tokens per request")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
    fig.tight_layout()
    fig.savefig(out / "tokens.png", dpi=110)
    plt.close(fig)
    files.append("tokens.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(labels, [r["usd_per_1k"] or 0 for r in rows], color="tab:green")
    ax.set_ylabel("$ per 1k requests")
    ax.set_title("Cost per 1k requests")
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
    fig.tight_layout()
    fig.savefig(out / "cost.png", dpi=110)
    plt.close(fig)
    files.append("cost.png")

    scored = [r for r in rows if r["accuracy"] is not None and r["usd_per_1k"] is not None]
    if scored:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in scored:
            ax.scatter(r["usd_per_1k"], r["accuracy"] * 100, s=60)
            ax.annotate(
                r["strategy"],
                (r["usd_per_1k"], r["accuracy"] * 100),
                textcoords="offset points",
                xytext=(5, 5),
            )
        ax.set_xlabel("$ per 1k requests")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Accuracy vs cost")
        fig.tight_layout()
        fig.savefig(out / "accuracy_cost.png", dpi=110)
        plt.close(fig)
        files.append("accuracy_cost.png")
    return files


def _html(results: dict[str, Any], rows: list[dict[str, Any]], plots: list[str]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for _, h, _ in _COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{e(_cell(r, k, d))}</td>" for k, _, d in _COLUMNS) + "</tr>"
        for r in rows
    )
    items = "".join(f"<li>{e(line.strip())}</li>" for line in headline(results))
    notes = "".join(f"<li>{e(a)}</li>" for a in _assumptions(results))
    imgs = "".join(f'<figure><img src="{e(p)}" alt="{e(p)}"></figure>' for p in plots)
    errors = "".join(
        f"<li>{e(n)}: {e(', '.join(f'{k}: {v}' for k, v in d['summary']['errors_by_type'].items()) or 'none')}</li>"  # noqa: E501
        for n, d in results["strategies"].items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(results["scenario"])} — tunegate load test</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}figure{{display:inline-block;margin:8px}}img{{max-width:520px}}</style>
</head><body>
<h1>Load test: {e(results["scenario"])}</h1>
<p>Started {e(results["started_at"])} against {e(results["url"])} on {e(results["machine"]["platform"])}.</p>
<h2>Headline</h2><ul>{items}</ul>
<h2>Strategies</h2><table><tr>{head}</tr>{body}</table>
<h2>Plots</h2>{imgs}
<h2>Errors</h2><ul>{errors}</ul>
<h2>Assumptions</h2><ul>{notes}</ul>
</body></html>
"""  # noqa: E501


def write_reports(results: dict[str, Any], out: Path) -> None:
    rows = cost_table(results)
    (out / "report.md").write_text(_markdown(results, rows))
    plots = _plots(results, rows, out)
    (out / "report.html").write_text(_html(results, rows, plots))
