"""Every shipped recipe loads and validates; overrides are typed; bad keys and values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.recipe import (
    LLAMA_LINEAR,
    Recipe,
    RecipeError,
    build_recipe,
    load_recipe,
    parse_overrides,
)
from tuner.tasks import TASKS

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SHIPPED = sorted(RECIPES.glob("*/*.yaml"))


def test_every_task_ships_lora_and_full() -> None:
    assert {(p.parent.name, p.stem) for p in SHIPPED} >= {
        (task, method) for task in TASKS for method in ("lora", "full")
    }


@pytest.mark.parametrize("path", SHIPPED, ids=[f"{p.parent.name}/{p.name}" for p in SHIPPED])
def test_shipped_recipe_is_valid_and_documents_its_command(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.task == path.parent.name
    assert recipe.method == path.stem
    header = path.read_text().splitlines()[:5]
    command = "distill" if recipe.method == "distill" else "tune"
    run = f"tunegate {command} recipes/{path.parent.name}/{path.name}"
    assert any(run in line for line in header)
    if recipe.method == "lora":
        # What vLLM serves: every Llama projection, rank within the store's default maximum.
        assert recipe.target_modules == list(LLAMA_LINEAR)
        assert recipe.lora_rank <= 64
    # Runs from a fresh clone: data comes from the task's generator.
    assert recipe.train_file is None and recipe.test_file is None


def test_overrides_are_typed() -> None:
    values = parse_overrides(
        [
            "lr=5e-4",
            "epochs=2",
            "lora_rank=32",
            "group_by_length=false",
            "base=tiny-random-llama",
            "name=123",
            "lora_targets=q_proj,v_proj",
            "train_file=null",
        ]
    )
    assert values == {
        "lr": 5e-4,
        "epochs": 2.0,
        "lora_rank": 32,
        "group_by_length": False,
        "base": "tiny-random-llama",
        "name": "123",
        "lora_targets": ["q_proj", "v_proj"],
        "train_file": None,
    }
    assert isinstance(values["epochs"], float)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learning_rate=1e-3", "unknown key 'learning_rate'"),
        ("lora_rnak=8", "did you mean 'lora_rank'"),
        ("lr", "expected key=value"),
        ("=3", "expected key=value"),
        ("lora_rank=sixteen", "lora_rank must be an integer"),
        ("lora_rank=2.5", "lora_rank must be an integer"),
        ("lr=fast", "lr must be a number"),
        ("evaluate=maybe", "evaluate must be true or false"),
        ("method=dora", "method must be one of"),
    ],
)
def test_bad_overrides_are_refused(override: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        parse_overrides([override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora_rank=128", "lora_rank: must be in 1..64"),
        ("lr=0", "lr: must be in"),
        ("epochs=0", "epochs: must be in"),
        ("batch_size=0", "batch_size"),
        ("name=Bad Name", "name: must match"),
        ("lora_targets=embed_tokens", "lora_targets"),
        ("precision=fp8", "precision"),
        ("lr_scheduler=exotic", "lr_scheduler"),
        ("max_steps=0", "max_steps"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe(SHIPPED[0], [override])


def test_recipe_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nlearning_rate: 1\n")
    with pytest.raises(RecipeError, match="unknown key 'learning_rate'"):
        load_recipe(bad)
    bad.write_text("- a list\n")
    with pytest.raises(RecipeError, match="expected a mapping"):
        load_recipe(bad)
    bad.write_text("task: telecom-routing\n")
    with pytest.raises(RecipeError, match="missing required key 'name'"):
        load_recipe(bad)
    bad.write_text("name: x\n")
    with pytest.raises(RecipeError, match="task: is required"):
        load_recipe(bad)
    bad.write_text("name: x\ntask: telecom-routing\nlr: 1e-3\n")
    assert load_recipe(bad).lr == 1e-3  # YAML 1.1 reads 1e-3 as text; it still counts


def test_all_linear_expands_to_llama_projections() -> None:
    recipe = build_recipe({"name": "x", "task": "telecom-routing"})
    assert recipe.target_modules == list(LLAMA_LINEAR)
    picked = Recipe(name="x", task="telecom-routing", lora_targets=["v_proj", "q_proj"])
    assert picked.target_modules == ["q_proj", "v_proj"]
