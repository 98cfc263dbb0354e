"""`tunegate demo` end to end on the tiny model: train, publish, serve, load-test, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunegate.config import load_settings
from tunegate.demo import DemoOptions, _adapter

TINY = [
    "base=tiny-random-llama",
    "max_steps=2",
    "n_train=32",
    "n_valid=8",
    "n_test=16",
    "eval_limit=8",
]


@pytest.mark.engine
def test_demo_runs_the_whole_story_and_reuses_the_adapter(home: Path) -> None:
    env = {
        **os.environ,
        "TUNEGATE_DEFAULT_BASE": "tiny-random-llama",
        "TUNEGATE_TUNER_EVAL_BACKEND": "transformers",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunegate",
            "demo",
            "--requests",
            "6",
            "--concurrency",
            "3",
            "--few-shot-k",
            "4",
            *TINY,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = home / "demo" / "telecom-routing"
    assert f"report: {out / 'report.html'}" in done.stdout
    for name in ("report.html", "report.md", "results.json", "scenario.yaml", "latency.png"):
        assert (out / name).is_file(), name

    results = json.loads((out / "results.json").read_text())
    strategies = results["strategies"]
    assert list(strategies) == ["base-few-shot", "base-short", "adapter-short"]
    for data in strategies.values():
        assert data["summary"]["ok"] == data["summary"]["requests"] == 6
    # The adapter was really served (not the base under its name), by the version published.
    assert strategies["adapter-short"]["summary"]["artifacts"] == {"telecom@1": 6}
    few, short = (strategies[n]["summary"] for n in ("base-few-shot", "adapter-short"))
    assert short["prompt_tokens_per_request"] < few["prompt_tokens_per_request"]
    assert results["hosted"]["priced_from"] == "base-few-shot"
    headline = [ln for ln in done.stdout.splitlines() if "per 1k requests" in ln]
    assert len(headline) == 4

    # A second run finds the published adapter (same recipe, same data) instead of training.
    lines: list[str] = []
    settings = load_settings(env={**env, "TUNEGATE_HOME": str(home)})
    ref, _ = _adapter(settings, DemoOptions(overrides=TINY), lines.append)
    assert ref == "telecom@1"
    assert any("reusing telecom@1" in line for line in lines)
