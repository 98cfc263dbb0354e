"""`tunegate loadtest`: run every strategy of a scenario against a URL and write the report."""

from __future__ import annotations

import asyncio
import json
import platform
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from loadtests.cost import chat_tokens, hosted_cost_per_1k, self_hosted_cost_per_1k
from loadtests.prompts import build_prompts, load_examples
from loadtests.report import write_reports
from loadtests.runner import RequestRecord, run_strategy
from loadtests.scenario import Scenario, check_url_allowed
from loadtests.stats import summarize

__all__ = ["run_loadtest"]


def run_loadtest(
    scenario: Scenario,
    url: str,
    out: Path,
    api_key: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the scenario, write results.json, report.md and report.html (+ PNGs) into `out`."""
    check_url_allowed(url, scenario.allowed_hosts)
    examples = load_examples(scenario.test_data)
    pool = load_examples(scenario.fewshot_pool) if scenario.fewshot_pool else None
    out.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(_run_all(scenario, url.rstrip("/"), api_key, examples, pool, progress))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_reports(results, out)
    return results


async def _run_all(
    scenario: Scenario,
    url: str,
    api_key: str | None,
    examples: list[Any],
    pool: list[Any] | None,
    progress: bool,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(
        max_connections=max(scenario.shape.concurrency, scenario.shape.max_in_flight) + 8,
        max_keepalive_connections=max(scenario.shape.concurrency, 8),
    )
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    strategies: dict[str, Any] = {}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=scenario.timeout_s, limits=limits
    ) as client:
        for strategy in scenario.strategies:
            prompts = build_prompts(strategy, examples, pool, scenario.seed)
            bar = tqdm(
                total=scenario.requests,
                desc=strategy.name,
                unit="req",
                disable=not progress,
                leave=True,
            )

            def tick(rec: RequestRecord, bar: tqdm = bar) -> None:  # type: ignore[type-arg]
                bar.update(1)
                if not rec.ok:
                    bar.set_postfix_str(f"last error: {rec.error_type}")

            phase_t0 = time.perf_counter()
            records, duration = await run_strategy(client, scenario, strategy, prompts, tick)
            bar.close()
            summary = summarize(records, duration)
            summary["wall_s"] = time.perf_counter() - phase_t0
            summary["self_hosted_usd_per_1k"] = self_hosted_cost_per_1k(
                scenario.pricing, duration, summary["ok"]
            )
            n = min(len(prompts), len(records)) or 1
            summary["cl100k_prompt_tokens_per_request"] = (
                sum(chat_tokens(p.messages, scenario.pricing.hosted_encoding) for p in prompts[:n])
                / n
            )
            strategies[strategy.name] = {
                "strategy": asdict(strategy),
                "summary": summary,
                "requests": [r.to_json() for r in records],
            }

    hosted = None
    if scenario.hosted_baseline:
        base = strategies[scenario.hosted_baseline]
        answers = [r["text"] for r in base["requests"] if r["ok"] and not r["warmup"]]
        prompts = build_prompts(
            next(s for s in scenario.strategies if s.name == scenario.hosted_baseline),
            examples,
            pool,
            scenario.seed,
        )
        hosted = {
            "model": scenario.pricing.hosted_model,
            "priced_from": scenario.hosted_baseline,
            **hosted_cost_per_1k(scenario.pricing, prompts, answers),
        }
    return {
        "scenario": scenario.name,
        "url": url,
        "started_at": started_at,
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "settings": {
            "shape": asdict(scenario.shape),
            "requests": scenario.requests,
            "warmup": scenario.warmup,
            "duration_s": scenario.duration_s,
            "max_tokens": scenario.max_tokens,
            "temperature": scenario.temperature,
            "stream": scenario.stream,
            "test_data": str(scenario.test_data),
        },
        "pricing": asdict(scenario.pricing),
        "hosted": hosted,
        "strategies": strategies,
    }
