"""`tunegate data`, `tunegate tune` and `tunegate eval` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from adapters_store.bases import BaseModel

REPO = Path(__file__).resolve().parents[2]


def tunegate(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunegate", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=cwd,
        timeout=900,
    )


def test_data_demo_then_validate(home: Path, tiny_model: BaseModel, tmp_path: Path) -> None:
    out = tmp_path / "telecom"
    made = tunegate("data", "demo", "telecom-routing", "--out", str(out), "--train", "40")
    assert made.returncode == 0, made.stderr
    assert "train: " in made.stdout and "(40 examples)" in made.stdout
    again = tunegate("data", "demo", "telecom-routing", "--out", str(out))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr

    ok = tunegate("data", "validate", str(out / "train.jsonl"), "--base", "tiny-random-llama")
    assert ok.returncode == 0, ok.stderr
    assert "40 valid example(s), ok" in ok.stdout

    bad = tmp_path / "bad.jsonl"
    lines = [
        '{"messages": [{"role": "user", "content": "hi"}]}',
        '{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}',
        "{oops",
    ]
    bad.write_text("\n".join(lines) + "\n")
    res = tunegate("data", "validate", str(bad), "--base", "tiny-random-llama")
    assert res.returncode == 1
    assert "line 1: example_missing_assistant_message: " in res.stdout
    assert "line 2: unrecognized_role: " in res.stdout
    assert "line 3: invalid_json: " in res.stdout
    as_json = tunegate("data", "validate", str(bad), "--base", "tiny-random-llama", "--json")
    cats = [p["category"] for p in json.loads(as_json.stdout)["problems"]]
    assert cats[:3] == ["example_missing_assistant_message", "unrecognized_role", "invalid_json"]


def test_tune_tiny_recipe_publishes_and_eval_reports(home: Path, tiny_model: BaseModel) -> None:
    res = tunegate(
        "tune",
        "recipes/retail-tagging/lora.yaml",
        "base=tiny-random-llama",
        "n_train=16",
        "n_valid=4",
        "n_test=6",
        "max_steps=2",
        "batch_size=4",
        "few_shot_k=1",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "retail@1"
    assert "tokens/s" in res.stdout
    assert "base few-shot" in res.stdout and "per-class F1" in res.stdout
    runs = list((home / "runs").glob("retail-*"))
    assert len(runs) == 1 and (runs[0] / "loss.png").is_file()

    test_file = next((home / "data" / "retail-tagging").glob("*/test.jsonl"))
    ev = tunegate("eval", "retail@1", "--data", str(test_file), "--json", "--few-shot-k", "1")
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads(ev.stdout)
    assert report["ref"] == "retail@1" and report["n"] == 6
    assert set(report["conditions"]) == {"base zero-shot", "base few-shot", "tuned"}
    for row in report["conditions"].values():
        assert 0 <= row["macro_f1"] <= 1 and row["prompt_tokens"] > 0 and row["perplexity"] > 0

    unknown = tunegate("eval", "nosuch", "--data", str(test_file))
    assert unknown.returncode == 1 and "nosuch" in unknown.stderr
    refused = tunegate("tune", "recipes/retail-tagging/lora.yaml", "learning_rate=1")
    assert refused.returncode == 1 and "unknown key 'learning_rate'" in refused.stderr
