"""The many-adapters benchmark's pure logic: arguments, the request mix, the summary maths."""

from __future__ import annotations

import argparse

import pytest

from loadtests.bench.common import MANY_PROMPTS, PROMPTS
from loadtests.bench.many_adapters import (
    Run,
    main,
    parse_counts,
    relative_to_base,
    request_for,
    speedup,
    summarize,
    table,
)


def _run(config: str, adapters: int, wall_s: float, latency_ms: list[float], **kw: object) -> Run:
    fields: dict[str, object] = {
        "round": 0,
        "requests": len(latency_ms),
        "errors": 0,
        "completion_tokens": 64 * len(latency_ms),
        "load_avg_1m": 1.5,
    }
    fields.update(kw)
    return Run(config=config, adapters=adapters, wall_s=wall_s, latency_ms=latency_ms, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "counts"),
    [("1,4,16,64", [1, 4, 16, 64]), ("16", [16]), (" 2, 8 ,", [2, 8])],
)
def test_parse_counts(text: str, counts: list[int]) -> None:
    assert parse_counts(text) == counts


@pytest.mark.parametrize("text", ["", ",", "1,x", "0,4", "-1", "4,4", "1.5"])
def test_parse_counts_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_counts(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["--requests", "0"],
        ["--concurrency", "0"],
        ["--max-tokens", "0"],
        ["--naive-requests", "-1"],
        ["--naive-budget-s", "0"],
        ["--counts", "4,x"],
        ["--skip-gateway", "--naive-requests", "0"],
    ],
)
def test_bad_arguments_exit_before_any_work(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_request_i_names_adapter_i_mod_n_with_prompt_i() -> None:
    models = ["a0", "a1", "a2"]
    assert request_for(0, models, MANY_PROMPTS) == (
        "a0",
        [{"role": "user", "content": MANY_PROMPTS[0]}],
    )
    assert request_for(4, models, MANY_PROMPTS)[0] == "a1"
    assert request_for(130, ["base"], MANY_PROMPTS)[1][0]["content"] == MANY_PROMPTS[2]
    # 128 distinct prompts: no request of a 128-request workload repeats one.
    assert len(set(MANY_PROMPTS)) == 128
    assert MANY_PROMPTS[: len(PROMPTS)] == PROMPTS


def test_summarize_takes_the_median_of_rounds_and_pools_latencies() -> None:
    runs = [
        _run("4 adapters", 4, 10.0, [100.0, 200.0, 300.0, 400.0], round=0),
        _run("4 adapters", 4, 4.0, [500.0, 600.0], round=1, requests=4, errors=2),
        _run("4 adapters", 4, 2.0, [700.0], round=2, completion_tokens=100),
    ]
    s = summarize(runs)
    # requests/s per round: 4/10, 2/4, 1/2 -> median 0.5; tokens/s: 25.6, 32, 50 -> 32.
    assert s["requests_per_s"] == pytest.approx(0.5)
    assert s["output_tok_per_s"] == pytest.approx(32.0)
    assert (s["requests"], s["errors"], s["rounds"]) == (9, 2, 3)
    assert s["completion_tokens_per_request"] == pytest.approx((256 + 128 + 100) / 7)
    assert s["e2e_p50_ms"] == pytest.approx(400.0)
    assert s["e2e_p99_ms"] == pytest.approx(694.0)  # numpy's linear interpolation
    assert s["load_avg_1m"] == [1.5, 1.5, 1.5]
    assert s["cpu_ms_per_request"] is None  # no run measured its CPU


def test_summarize_takes_the_median_cpu_per_served_request() -> None:
    runs = [
        _run("base", 0, 1.0, [100.0] * 4, cpu_s=2.0),  # 500 ms per request
        _run("base", 0, 1.0, [100.0] * 2, requests=4, errors=2, cpu_s=2.0),  # 1000
        _run("base", 0, 1.0, [100.0] * 4, cpu_s=1.2),  # 300
        _run("base", 0, 1.0, [], requests=2, errors=2, cpu_s=9.0),  # served nothing
    ]
    s = summarize(runs)
    assert s["cpu_ms_per_request"] == pytest.approx(500.0)
    assert table(relative_to_base({"base": s})).splitlines()[2].endswith("| 1.000 | 500.0 |")


def test_summarize_without_successes_has_no_latencies() -> None:
    s = summarize([_run("base", 0, 5.0, [], requests=3, errors=3)])
    assert s["requests_per_s"] == 0.0
    assert s["e2e_p50_ms"] is None
    assert s["completion_tokens_per_request"] is None


@pytest.mark.parametrize("runs", [[], [_run("base", 0, 0.0, [1.0])]])
def test_summarize_refuses_empty_or_zero_time(runs: list[Run]) -> None:
    with pytest.raises(ValueError, match="positive wall time"):
        summarize(runs)


def _summaries() -> dict[str, dict[str, object]]:
    return relative_to_base(
        {
            "base": summarize([_run("base", 0, 2.0, [100.0] * 8)]),
            "16 adapters": summarize([_run("16 adapters", 16, 4.0, [300.0] * 8)]),
            "naive, 16 adapters": summarize([_run("naive, 16 adapters", 16, 40.0, [5000.0] * 8)]),
        }
    )


def test_relative_to_base_and_speedup_over_naive() -> None:
    summaries = _summaries()
    assert summaries["base"]["vs_base"] == pytest.approx(1.0)
    assert summaries["16 adapters"]["vs_base"] == pytest.approx(0.5)
    assert summaries["naive, 16 adapters"]["vs_base"] == pytest.approx(0.05)
    assert speedup(summaries, 16) == pytest.approx(10.0)
    assert speedup(summaries, 4) is None  # neither side ran a 4-adapter mix


def test_no_base_no_ratio_and_table_marks_missing_values() -> None:
    summaries = relative_to_base(
        {"naive, 16 adapters": summarize([_run("naive, 16 adapters", 16, 8.0, [])])}
    )
    assert summaries["naive, 16 adapters"]["vs_base"] is None
    assert speedup(summaries, 16) is None  # no gateway side
    lines = table(summaries).splitlines()
    assert lines[0].startswith("| configuration |")
    assert lines[2] == "| naive, 16 adapters | 0 (0) | 0.000 | 0.0 | - | - | - | - |"


def test_table_has_one_row_per_configuration_in_order() -> None:
    lines = table(_summaries()).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| base",
        "| 16 adapters",
        "| naive, 16 adapters",
    ]
    assert lines[3] == "| 16 adapters | 8 (0) | 2.000 | 128.0 | 300 | 300 | 0.500 | - |"
