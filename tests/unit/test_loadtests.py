from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtests.cost import chat_tokens, hosted_cost_per_1k, self_hosted_cost_per_1k
from loadtests.prompts import Prompt, answers_match, build_prompts, load_examples
from loadtests.report import cost_table, headline
from loadtests.run import run_loadtest
from loadtests.scenario import (
    Pricing,
    ScenarioError,
    Strategy,
    check_url_allowed,
    load_scenario,
)
from loadtests.stats import percentiles
from tests.unit.fake_openai import ANSWER, TOKEN_DELAY_S, fake_openai_server

LABELS = ["billing_dispute", "roaming"]
SYSTEM = "Route the ticket to one of: billing_dispute, roaming."


def _write_data(folder: Path, questions: list[str]) -> Path:
    rows = []
    for i, q in enumerate(questions):
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": q},
            {"role": "assistant", "content": LABELS[i % 2]},
        ]
        rows.append(json.dumps({"messages": messages}))
    path = folder / "test.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def _scenario(folder: Path, extra: str = "", questions: list[str] | None = None) -> Path:
    _write_data(folder, questions or [f"question {i}" for i in range(10)])
    (folder / "pool.jsonl").write_text((folder / "test.jsonl").read_text())
    text = f"""
name: unit
data: {{test: test.jsonl, fewshot_pool: pool.jsonl}}
requests: 10
warmup: 2
max_tokens: 8
shape: {{kind: closed, concurrency: 3}}
hosted_baseline: fewshot
strategies:
  - {{name: fewshot, model: base, prompt: few_shot, k: 2}}
  - {{name: adapter, model: ad@prod, prompt: bare}}
{extra}
"""
    path = folder / "scenario.yaml"
    path.write_text(text)
    return path


# --- scenario -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ("bogus: 1", "unknown keys: bogus"),
        ("shape: {kind: open}", "open loop needs rate > 0"),
        ("shape: {kind: sideways, concurrency: 2}", "kind must be closed or open"),
        ("requests: 0", "must be positive"),
        ("hosted_baseline: nope", "hosted_baseline 'nope' is not a strategy"),
        ("pricing: {gpu_hour_usd: -1}", "gpu_hour_usd must be >= 0"),
        ("pricing: {gpu_hours: 1}", "pricing: unknown keys: gpu_hours"),
    ],
)
def test_bad_scenarios_are_refused_with_the_reason(
    tmp_path: Path, patch: str, message: str
) -> None:
    path = _scenario(tmp_path)
    key = patch.split(":")[0]
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(key + ":")]
    path.write_text("\n".join([*lines, patch]) + "\n")
    with pytest.raises(ScenarioError, match=message):
        load_scenario(path)


def test_strategy_rules() -> None:
    with pytest.raises(ValueError, match="needs k >= 1"):
        Strategy("a", "m", "few_shot")
    with pytest.raises(ValueError, match="only meaningful with prompt: few_shot"):
        Strategy("a", "m", "short", k=3)


def test_scenario_paths_resolve_against_its_folder(tmp_path: Path) -> None:
    s = load_scenario(_scenario(tmp_path), {"requests": 4})
    assert s.test_data == tmp_path / "test.jsonl"
    assert s.requests == 4
    assert [x.name for x in s.strategies] == ["fewshot", "adapter"]


@pytest.mark.parametrize(
    ("url", "allowed", "ok"),
    [
        ("http://127.0.0.1:8000", (), True),
        ("http://localhost:8000/", (), True),
        ("http://[::1]:8000", (), True),
        ("http://127.3.4.5:1", (), True),
        ("http://10.0.0.5:8000", (), False),
        ("https://api.openai.com", (), False),
        ("http://gpu-box:8000", ("gpu-box",), True),
        ("ftp://127.0.0.1", (), False),
    ],
)
def test_only_loopback_or_listed_hosts(url: str, allowed: tuple[str, ...], ok: bool) -> None:
    if ok:
        check_url_allowed(url, allowed)
    else:
        with pytest.raises(ScenarioError):
            check_url_allowed(url, allowed)


# --- prompts --------------------------------------------------------------------------------


def test_prompt_styles(tmp_path: Path) -> None:
    examples = load_examples(_write_data(tmp_path, ["q0", "q1", "q2", "q3"]))
    short = build_prompts(Strategy("s", "m", "short"), examples, None, 0)
    assert short[0].messages == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "q0"},
    ]
    assert short[1].expected == "roaming"
    bare = build_prompts(Strategy("b", "m", "bare"), examples, None, 0)
    assert bare[0].messages == [{"role": "user", "content": "q0"}]

    few = build_prompts(Strategy("f", "m", "few_shot", k=2), examples, examples, 0)
    msgs = few[0].messages
    assert msgs[0]["role"] == "system" and msgs[-1] == {"role": "user", "content": "q0"}
    shots = [m["content"] for m in msgs[1:-1] if m["role"] == "assistant"]
    assert sorted(shots) == LABELS, "shots cover distinct answers first"
    assert all(p.messages[:-1] == msgs[:-1] for p in few), "one fixed prefix for every request"

    with pytest.raises(ScenarioError, match="wants 5 few-shot examples"):
        build_prompts(Strategy("f", "m", "few_shot", k=5), examples, examples, 0)


def test_bad_test_data_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "x"}]}\n{"nope": 1}\n')
    with pytest.raises(ScenarioError, match="line 2"):
        load_examples(path)


@pytest.mark.parametrize(
    ("answer", "expected", "match"),
    [
        ("billing_dispute", "billing_dispute", True),
        ("  Billing_Dispute.\n", "billing_dispute", True),
        ('"roaming"', "roaming", True),
        ("roaming\nbecause abroad", "roaming", True),
        ("roaming charges", "roaming", False),
        ("", "roaming", False),
        ("billing", "billing_dispute", False),
    ],
)
def test_answers_match(answer: str, expected: str, match: bool) -> None:
    assert answers_match(answer, expected) is match


# --- stats and cost -------------------------------------------------------------------------


def test_percentiles_match_numpy() -> None:
    values = [float(v) for v in range(1, 101)]
    p = percentiles(values)
    assert p["p50"] == pytest.approx(50.5)
    assert p["p90"] == pytest.approx(float(np.percentile(values, 90)))
    assert p["p99"] == pytest.approx(99.01)
    assert p["mean"] == pytest.approx(50.5)
    assert percentiles([])["p50"] is None


def test_self_hosted_cost_arithmetic() -> None:
    pricing = Pricing(gpu_hour_usd=2.0)
    # 36 s of a $2/h machine = $0.02, over 10 answered requests = $2.00 per 1k.
    assert self_hosted_cost_per_1k(pricing, 36.0, 10) == pytest.approx(2.0)
    assert self_hosted_cost_per_1k(pricing, 36.0, 0) is None


def test_hosted_cost_arithmetic() -> None:
    pricing = Pricing(hosted_input_per_mtok=1.0, hosted_output_per_mtok=2.0)
    messages = [{"role": "user", "content": "hello world"}]
    # 3 reply priming + 3 per message + "user" (1) + "hello world" (2) = 9.
    assert chat_tokens(messages, pricing.hosted_encoding) == 9
    out = hosted_cost_per_1k(pricing, [Prompt(messages, None)] * 4, ["hello world"] * 4)
    assert out["prompt_tokens_per_request"] == 9
    assert out["completion_tokens_per_request"] == 2
    # (9 × $1 + 2 × $2) per million tokens = $13e-6 per request = $0.013 per 1k.
    assert out["usd_per_1k"] == pytest.approx(0.013)


# --- the generator against a real HTTP server -----------------------------------------------


def _run(tmp_path: Path, questions: list[str], **overrides: Any) -> dict[str, Any]:
    scenario = load_scenario(_scenario(tmp_path, questions=questions), overrides)
    with fake_openai_server() as (url, seen):
        results = run_loadtest(scenario, url, tmp_path / "out", progress=False)
    results["_seen"] = seen
    return results


def test_closed_loop_counts_latency_accuracy_and_tokens(tmp_path: Path) -> None:
    results = _run(tmp_path, [f"question {i}" for i in range(10)])
    seen = results.pop("_seen")
    assert len(seen) == 2 * (10 + 2), "every measured and warm-up request reached the server"
    assert all(b["stream"] and b["stream_options"] == {"include_usage": True} for b in seen)
    for name in ("fewshot", "adapter"):
        s = results["strategies"][name]["summary"]
        assert (s["requests"], s["ok"], s["errors"]) == (10, 10, 0)
        assert s["accuracy"] == pytest.approx(0.5)  # the server always says billing_dispute
        assert s["completion_tokens_per_request"] == len(ANSWER)
        assert s["ttft_ms"]["p50"] >= TOKEN_DELAY_S * 1000
        assert s["e2e_ms"]["p50"] >= len(ANSWER) * TOKEN_DELAY_S * 1000
        assert s["e2e_ms"]["p50"] > s["ttft_ms"]["p50"]
        assert s["tpot_ms"]["p50"] is not None and s["itl_ms"]["p50"] is not None
        assert s["requests_per_s"] > 0 and s["self_hosted_usd_per_1k"] > 0
        reqs = results["strategies"][name]["requests"]
        assert sum(r["warmup"] for r in reqs) == 2
        assert sorted(r["index"] for r in reqs if not r["warmup"]) == list(range(10))
    few = results["strategies"]["fewshot"]["summary"]
    bare = results["strategies"]["adapter"]["summary"]
    assert few["prompt_tokens_per_request"] > bare["prompt_tokens_per_request"]
    assert results["strategies"]["adapter"]["requests"][5]["artifact"] == "ad@prod"

    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["strategies"]["adapter"]["summary"]["ok"] == 10
    for name in (
        "report.html",
        "report.md",
        "latency.png",
        "tokens.png",
        "cost.png",
        "accuracy_cost.png",
    ):
        assert (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    assert "hosted gpt-4o-mini" in html and '<img src="latency.png"' in html
    assert 'src="http' not in html and 'href="http' not in html, "opens offline"
    assert any("fewer than fewshot" in line for line in headline(results))


def test_errors_are_counted_by_status_and_type_never_hidden(tmp_path: Path) -> None:
    questions = ["ok 0", "fail-500", "ok 2", "fail-429", "stream-error", "ok 5", "json-instead"]
    results = _run(tmp_path, questions, requests=7, warmup=0)
    s = results["strategies"]["adapter"]["summary"]
    assert (s["requests"], s["ok"], s["errors"]) == (7, 3, 4)
    assert s["errors_by_type"] == {
        "200 invalid_stream": 1,
        "200 server_error": 1,
        "429 scripted_429": 1,
        "500 scripted_500": 1,
    }
    assert s["error_rate"] == pytest.approx(4 / 7)
    assert s["accuracy"] is not None and s["scored"] == 3, "only answered requests are scored"


def test_open_loop_and_non_streaming(tmp_path: Path) -> None:
    results = _run(
        tmp_path,
        [f"q{i}" for i in range(10)],
        shape={"kind": "open", "rate": 200.0},
        stream=False,
        requests=12,
    )
    seen = results.pop("_seen")
    assert not any(b["stream"] for b in seen)
    for data in results["strategies"].values():
        s = data["summary"]
        assert (s["requests"], s["ok"]) == (12, 12)
        assert s["tpot_ms"]["p50"] is not None
        starts = [r["start_s"] for r in data["requests"] if not r["warmup"]]
        assert max(starts) > 0, "arrivals are spread over time, not sent at once"


def test_duration_bound_stops_starting_requests(tmp_path: Path) -> None:
    results = _run(
        tmp_path, [f"q{i}" for i in range(10)], requests=10_000, duration_s=0.3, warmup=0
    )
    for data in results["strategies"].values():
        assert 0 < data["summary"]["requests"] < 10_000


def test_cost_table_has_hosted_row(tmp_path: Path) -> None:
    results = _run(tmp_path, [f"q{i}" for i in range(10)])
    results.pop("_seen")
    rows = cost_table(results)
    assert [r["strategy"] for r in rows] == ["fewshot", "adapter", "hosted gpt-4o-mini"]
    hosted = rows[-1]
    assert hosted["cl100k_prompt_tokens"] == pytest.approx(
        results["strategies"]["fewshot"]["summary"]["cl100k_prompt_tokens_per_request"]
    )
    assert hosted["accuracy"] is None, "never claim an accuracy that was not measured"


def test_cli_writes_report_and_refuses_remote_hosts(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path)
    with fake_openai_server() as (url, _):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tunegate",
                "loadtest",
                str(scenario),
                "--url",
                url,
                "--out",
                str(tmp_path / "cli"),
                "--no-progress",
                "requests=4",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert "report:" in done.stdout and "adapter" in done.stdout
    assert json.loads((tmp_path / "cli" / "results.json").read_text())["settings"]["requests"] == 4

    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunegate",
            "loadtest",
            str(scenario),
            "--url",
            "http://203.0.113.7:8000",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "refusing to send load" in refused.stderr
    assert not (tmp_path / "x").exists()
