"""The fast-LoRA engine benchmark's report maths: per-round ratios, medians, round-robin."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.bench.fast_lora import _play_rounds, summarise


def _run(workload: str, mix: str, round_: int, seconds: float, tokens: int = 7) -> dict[str, Any]:
    return {
        "workload": workload,
        "mix": mix,
        "round": round_,
        "seconds": seconds,
        "prompt_tokens": 100,
        "output_tokens": 20,
        "token_ids": [[tokens]],
        "load_avg_1m": 1.0,
    }


def test_ratios_are_medians_of_the_per_round_ratios() -> None:
    """Round 1 ran under load for every engine alike: the per-round ratios ignore it, where
    a ratio of the engines' median seconds would not."""
    engines = {
        "base model": {
            "runs": [_run("prefill-heavy", "base", r, s) for r, s in enumerate((10, 20, 11))]
        },
        "vLLM ops": {"runs": [_run("prefill-heavy", "1 adapter", 0, 50.0)]},
        "fast ops": {
            "runs": [
                _run("prefill-heavy", "1 adapter", r, s) for r, s in enumerate((12.5, 25.0, 13.75))
            ]
        },
    }
    rows = {(r["workload"], r["mix"]): r for r in summarise(engines)}
    one = rows[("prefill-heavy", "1 adapter")]
    assert one["fast ops"]["vs_base_model"] == pytest.approx(0.8)  # 10/12.5, 20/25, 11/13.75
    assert one["fast ops"]["seconds"] == 13.75
    assert one["fast ops"]["rounds"] == 3
    assert one["fast ops"]["seconds_each_round"] == [12.5, 25.0, 13.75]
    # vLLM's ops ran in round 0 only: the speed-up compares that round.
    assert one["fast_vs_vllm_speedup"] == pytest.approx(4.0)
    assert one["same_greedy_tokens"] is True
    assert one["vLLM ops"]["vs_base_model"] == pytest.approx(0.2)
    assert rows[("prefill-heavy", "base")]["base model"]["vs_base_model"] == pytest.approx(1.0)
    assert "fast ops" not in rows[("decode-heavy", "4 adapters")]


def test_different_greedy_tokens_are_reported() -> None:
    engines = {
        "vLLM ops": {"runs": [_run("decode-heavy", "4 adapters", 0, 5.0, tokens=1)]},
        "fast ops": {"runs": [_run("decode-heavy", "4 adapters", 0, 4.0, tokens=2)]},
    }
    row = next(r for r in summarise(engines) if r["mix"] == "4 adapters" and "fast ops" in r)
    assert row["same_greedy_tokens"] is False
    assert row["fast ops"]["vs_base_model"] is None  # no base model engine ran


class _FakeEngine:
    def __init__(self, label: str, log: list[tuple[str, str, str]]) -> None:
        self.label, self.log = label, log

    def run(self, workload: str, mix: str) -> dict[str, Any]:
        self.log.append((self.label, workload, mix))
        return _run(workload, mix, -1, 1.0)


def test_rounds_rotate_the_engines_and_limit_vllm_ops() -> None:
    log: list[tuple[str, str, str]] = []
    engines = {label: _FakeEngine(label, log) for label in ("base model", "vLLM ops", "fast ops")}
    runs = _play_rounds(engines, rounds=3, stock_rounds=1)  # type: ignore[arg-type]
    assert [r["round"] for r in runs["fast ops"]] == [0] * 6 + [1] * 6 + [2] * 6
    assert len(runs["vLLM ops"]) == 6  # round 0 only: 2 workloads x 3 mixes
    # The base model (no LoRA) runs the base mix only.
    assert {(w, m) for label, w, m in log if label == "base model"} == {
        ("prefill-heavy", "base"),
        ("decode-heavy", "base"),
    }
    # The turns on one workload and mix, round by round: the order rotates among the
    # engines of the round.
    turns = [entry[0] for entry in log if entry[1:] == ("prefill-heavy", "base")]
    assert turns == [
        "base model",
        "vLLM ops",
        "fast ops",
        "fast ops",
        "base model",
        "base model",
        "fast ops",
    ]
