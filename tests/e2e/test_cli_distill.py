"""`tunegate distill` as a user runs it, on the tiny model (2 layers -> a 1-layer student):
tune a teacher, distil it, find the student published with its lineage, evaluation and speed,
and have vLLM load and run the student folder from the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters_store.bases import BaseModel, BaseRegistry
from adapters_store.catalog import Store
from tests.e2e.test_cli_tune import tunegate

SMALL = ["n_train=16", "n_valid=4", "n_test=6", "batch_size=4"]


@pytest.mark.engine
def test_distill_tiny_teacher_publishes_a_student_vllm_serves(
    home: Path, tiny_model: BaseModel
) -> None:
    tuned = tunegate(
        "tune",
        "recipes/telecom-routing/lora.yaml",
        "base=tiny-random-llama",
        *SMALL,
        "max_steps=1",
        "evaluate=false",
    )
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert tuned.stdout.strip().splitlines()[-1] == "telecom@1"

    res = tunegate(
        "distill",
        "recipes/telecom-routing/distill.yaml",
        *SMALL,
        "student_layers=spread:1",
        "max_steps=2",
        "save_steps=1",
        "logging_steps=1",
        "eval_limit=2",
        "few_shot_k=0",
        "speed_prompts=2",
        "speed_tokens=4",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "telecom-student@1"
    assert "student keeps layers [0] of telecom@1" in res.stdout
    assert "decode speed (transformers" in res.stdout

    store = Store(home / "store", BaseRegistry(home / "models"))
    version = store.resolve("telecom-student@1")
    card = version.card
    assert version.kind == "model" and version.base == "tiny-random-llama"
    assert card["method"] == "distill" and card["parent"] == "telecom@1"
    assert card["num_hidden_layers"] == 1
    assert card["distillation"]["kept_layers"] == [0]
    assert card["distillation"]["teacher_kind"] == "lora"
    conditions = card["metrics"]["conditions"]
    assert set(conditions) == {"base zero-shot", "teacher", "tuned"}
    for row in conditions.values():
        assert row["n"] == 2 and 0 <= row["macro_f1"] <= 1
    speed = card["speed"]
    assert speed["prompts"] == 2 and speed["new_tokens"] == 4
    for who in ("teacher", "student"):
        assert speed[who]["decode_tokens_per_s"] > 0
    assert speed["decode_speedup"] > 0

    # Run folder: the Trainer's machinery with the KD parts logged beside the loss.
    (run,) = (home / "runs").glob("telecom-student-*")
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("kl" in m and "ce" in m and "loss" in m for m in metrics)
    assert (run / "loss.png").is_file() and (run / "checkpoints" / "checkpoint-2").is_dir()

    from vllm import LLM, SamplingParams

    llm = LLM(str(version.path), dtype="bfloat16", max_model_len=512, seed=0)
    try:
        out = llm.chat(
            [[{"role": "user", "content": "My phone has no signal."}]],
            SamplingParams(temperature=0.0, max_tokens=4),
            use_tqdm=False,
        )
        assert len(out[0].outputs[0].token_ids) >= 1
    finally:
        del llm


def test_distill_refusals(
    home: Path, tiny_model: BaseModel, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process `main` (the CLI's own door): a subprocess each would only add start-up time.
    from tunegate.cli import main

    def run(*args: str) -> tuple[int, str]:
        code = main(list(args))
        return code, capsys.readouterr().err

    code, err = run("distill", "recipes/telecom-routing/lora.yaml")
    assert code == 1 and "run it with `tunegate tune`" in err
    code, err = run("tune", "recipes/telecom-routing/distill.yaml")
    assert code == 1 and "run it with `tunegate distill`" in err
    code, err = run("distill", "recipes/telecom-routing/distill.yaml", "teacher=nosuch")
    assert code == 1 and "nosuch" in err
    assert not (home / "runs").exists()  # refused before any run folder or model
    code, err = run("distill", "recipes/telecom-routing/distill.yaml", "student_layers=half")
    assert code == 1 and "student_layers" in err
