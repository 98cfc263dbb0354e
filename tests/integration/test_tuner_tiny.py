"""Whole pipeline on the tiny model: recipe -> train -> evaluate -> publish -> re-evaluate.

Tiny random weights learn nothing useful; these tests check the plumbing and the artifacts:
a vLLM-servable LoRA folder, a full model folder, run outputs, cards, resume.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adapters_store.bases import BaseModel, BaseRegistry
from adapters_store.catalog import Store
from tuner.config import TunerConfig
from tuner.data import InvalidDataError
from tuner.pipeline import evaluate_reference, tune
from tuner.recipe import load_recipe
from tuner.tasks import get_task

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
FAST = [
    "base=tiny-random-llama",
    "n_train=24",
    "n_valid=8",
    "n_test=8",
    "max_steps=3",
    "batch_size=4",
    "save_steps=2",
    "logging_steps=1",
]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_tiny_lora_end_to_end(home: Path, tiny_model: BaseModel) -> None:
    recipe = load_recipe(RECIPES / "telecom-routing" / "lora.yaml", [*FAST, "lora_rank=8"])
    logs: list[str] = []
    outcome = tune(recipe, home, TunerConfig(eval_batch_size=4), echo=logs.append)
    run = outcome.run

    # Data was generated because the recipe's files were absent.
    assert run.data.train.is_file() and len(_lines(run.data.train)) == 24
    assert any(line.startswith("generated 24 telecom-routing") for line in logs)
    # Run folder: recipe, checkpoints, metrics, loss curve, throughput.
    assert (run.run_dir / "recipe.yaml").is_file()
    assert (run.run_dir / "loss.png").stat().st_size > 1000
    metrics = [json.loads(x) for x in _lines(run.run_dir / "metrics.jsonl")]
    assert any("loss" in m for m in metrics)
    assert (run.run_dir / "checkpoints" / "checkpoint-2").is_dir()
    assert run.train_tokens > 0 and run.tokens_per_second > 0
    assert any("tokens/s" in line for line in logs)

    # The adapter is what vLLM serves: safetensors, explicit projections, no extras.
    adapter = json.loads((run.output_dir / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["bias"] == "none"
    assert adapter["modules_to_save"] is None
    assert set(adapter["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip
    assert (run.output_dir / "adapter_model.safetensors").is_file()
    assert not list(run.output_dir.glob("*.bin"))

    # Evaluation ran on every condition and went into the published card.
    assert outcome.evaluation is not None
    conds = outcome.evaluation.conditions
    assert list(conds) == ["base zero-shot", "base few-shot", "tuned"]
    assert conds["base few-shot"]["prompt_tokens"] > 3 * conds["tuned"]["prompt_tokens"]
    assert outcome.reference == "telecom@1"
    store = Store(home / "store", BaseRegistry(home / "models"))
    version = store.resolve("telecom@1")
    assert version.kind == "lora" and version.base == "tiny-random-llama"
    card = version.card
    task = get_task("telecom-routing")
    assert card["method"] == "lora" and card["task"] == "telecom-routing"
    assert card["system_prompt"] == task.system_prompt
    assert card["labels"] == list(task.labels)
    assert card["recipe"]["lora_rank"] == 8
    assert len(card["dataset_sha256"]) == 64
    assert card["metrics"]["conditions"]["tuned"]["n"] == 8

    # Re-evaluation of the published artifact; a conversation without a system message gets
    # the card's prompt (the test file has one, so compare prompt sizes instead).
    result, ref = evaluate_reference(
        "telecom", run.data.test, home, TunerConfig(eval_batch_size=4), few_shot_k=1, limit=4
    )
    assert ref == "telecom@1" and result.n == 4
    assert store.resolve("telecom@1").card["metrics"]["n"] == 4


def test_tiny_full_end_to_end(home: Path, tiny_model: BaseModel) -> None:
    recipe = load_recipe(RECIPES / "manufacturing-triage" / "full.yaml", [*FAST, "evaluate=false"])
    outcome = tune(recipe, home, TunerConfig(), echo=lambda _: None)
    model_dir = outcome.run.output_dir
    assert model_dir.name == "model"
    assert (model_dir / "model.safetensors").is_file()
    assert json.loads((model_dir / "config.json").read_text())["dtype"] == "bfloat16"
    assert outcome.reference == "manufacturing-full@1"
    version = Store(home / "store", BaseRegistry(home / "models")).resolve(outcome.reference)
    assert version.kind == "model" and version.card["method"] == "full"


def test_resume_continues_from_the_last_checkpoint(home: Path, tiny_model: BaseModel) -> None:
    from tuner.train import train

    overrides = [*FAST, "max_steps=4", "evaluate=false", "publish=false"]
    recipe = load_recipe(RECIPES / "telecom-routing" / "lora.yaml", overrides)
    first = train(recipe, home, echo=lambda _: None)
    checkpoints = first.run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    # Simulate a run killed after its step-2 checkpoint.
    shutil.rmtree(checkpoints / "checkpoint-4")
    shutil.rmtree(first.output_dir)
    (first.run_dir / "metrics.jsonl").unlink()

    resumed = train(recipe, home, resume=first.run_dir, echo=lambda _: None)
    assert resumed.run_dir == first.run_dir
    assert (resumed.output_dir / "adapter_model.safetensors").is_file()
    steps = [json.loads(x)["step"] for x in _lines(first.run_dir / "metrics.jsonl")]
    assert min(steps) > 2 and max(steps) == 4  # only steps 3-4 were trained again
    assert json.loads((first.run_dir / "run.json").read_text())["steps"] == 4

    other = load_recipe(RECIPES / "telecom-routing" / "lora.yaml", [*overrides, "lr=1e-4"])
    with pytest.raises(RuntimeError, match="another recipe"):
        train(other, home, resume=first.run_dir, echo=lambda _: None)


def test_training_refuses_invalid_data_before_loading_a_model(
    home: Path, tiny_model: BaseModel, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    recipe = load_recipe(
        RECIPES / "telecom-routing" / "lora.yaml",
        [*FAST, f"train_file={bad}", "evaluate=false", "publish=false"],
    )
    with pytest.raises(InvalidDataError) as info:
        tune(recipe, home, TunerConfig(), echo=lambda _: None)
    assert "line 1: example_missing_assistant_message" in str(info.value)
    assert "line 2: invalid_json" in str(info.value)
    assert not (home / "runs").exists()
