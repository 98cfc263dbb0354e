"""The tuning-throughput benchmark's pure logic: arguments, order, recipe, summary maths."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loadtests.bench.tuning_throughput import (
    RECIPE,
    SYSTEMS,
    Run,
    _CountingCollator,
    main,
    parse_systems,
    recipe_overrides,
    run_from_record,
    schedule,
    summarize,
    table,
)
from tuner.recipe import load_recipe


def _run(system: str, tokens: int, seconds: float, **kw: object) -> Run:
    fields: dict[str, object] = {
        "run": 0,
        "steps": 10,
        "process_seconds": seconds + 20,
        "final_loss": 1.0,
        "threads": 1,
        "load_avg_1m": 2.0,
    }
    fields.update(kw)
    return Run(system=system, train_tokens=tokens, train_seconds=seconds, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "systems"),
    [
        ("tunegate,plain,trl", ["tunegate", "plain", "trl"]),
        (" plain , tunegate ", ["plain", "tunegate"]),
    ],
)
def test_parse_systems(text: str, systems: list[str]) -> None:
    assert parse_systems(text) == systems


@pytest.mark.parametrize("text", ["", ",", "tunegate,axolotl", "plain,plain"])
def test_parse_systems_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_systems(text)


@pytest.mark.parametrize(
    "argv", [["--steps", "0"], ["--passes", "0"], ["--threads", "-1"], ["--systems", "x"]]
)
def test_bad_arguments_exit_before_any_work(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_schedule_alternates_every_system_once_per_pass() -> None:
    assert schedule(["tunegate", "plain"], 2) == [
        (0, "tunegate"),
        (0, "plain"),
        (1, "tunegate"),
        (1, "plain"),
    ]
    assert [s for _, s in schedule(list(SYSTEMS), 1)] == list(SYSTEMS)


def test_overrides_make_the_shipped_recipe_a_pure_training_run(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    recipe = load_recipe(RECIPE, recipe_overrides(train, 30, "fp32"))
    assert (recipe.max_steps, recipe.precision, recipe.train_file) == (30, "fp32", str(train))
    assert not (recipe.evaluate or recipe.publish or recipe.eval_valid)
    assert recipe.save_steps > recipe.max_steps  # no checkpoint inside the timed loop
    # The settings the peers copy are the recipe's own.
    assert (recipe.task, recipe.lora_rank, recipe.batch_size) == ("telecom-routing", 16, 8)


def test_run_from_record_reads_tunegate_run_json_and_worker_lines() -> None:
    record = {"steps": 20, "train_tokens": 13110, "train_seconds": 286.2, "train_loss": 0.81}
    run = run_from_record("tunegate", 1, {**record, "threads": 2, "process_seconds": 377}, 7.0)
    assert (run.system, run.run, run.steps, run.threads) == ("tunegate", 1, 20, 2)
    assert run.tokens_per_s == pytest.approx(13110 / 286.2)
    assert run.final_loss == pytest.approx(0.81) and run.load_avg_1m == 7.0
    no_loss = run_from_record("plain", 0, {**record, "train_loss": None, "threads": 1}, 1.0)
    assert no_loss.final_loss is None and no_loss.process_seconds == 0.0


@pytest.mark.parametrize(
    "bad", [{"steps": 0}, {"train_tokens": 0}, {"train_seconds": 0.0}, {"train_seconds": -1}]
)
def test_run_from_record_refuses_a_run_that_did_not_train(bad: dict[str, object]) -> None:
    record = {"steps": 5, "train_tokens": 100, "train_seconds": 3.0, "threads": 1, **bad}
    with pytest.raises(ValueError, match="did not train"):
        run_from_record("plain", 0, record, 1.0)


def test_summarize_takes_medians_and_ratios_against_tunegate() -> None:
    runs = [
        _run("tunegate", 1000, 10.0, run=0),
        _run("plain", 1000, 20.0, run=0),
        _run("tunegate", 1000, 5.0, run=1, load_avg_1m=4.0),
        _run("plain", 1200, 20.0, run=1),
        _run("tunegate", 900, 10.0, run=2),
    ]
    s = summarize(runs)
    assert list(s) == ["tunegate", "plain"]
    # tunegate: 100, 200, 90 tok/s -> 100; plain: 50, 60 -> 55.
    assert s["tunegate"]["tokens_per_s"] == pytest.approx(100.0)
    assert s["plain"]["tokens_per_s"] == pytest.approx(55.0)
    assert s["plain"]["tunegate_speedup"] == pytest.approx(100 / 55)
    assert s["tunegate"]["tunegate_speedup"] == pytest.approx(1.0)
    assert s["tunegate"]["seconds_per_step"] == pytest.approx(1.0)
    assert s["plain"]["tokens_per_step"] == pytest.approx(110.0)
    assert s["tunegate"]["load_avg_1m"] == [2.0, 4.0, 2.0]


def test_without_tunegate_there_is_no_ratio_and_the_table_says_so() -> None:
    s = summarize([_run("plain", 500, 10.0), _run("trl", 250, 10.0)])
    assert "tunegate_speedup" not in s["plain"]
    lines = table(s).splitlines()
    assert lines[0].startswith("| trainer | tokens/s |")
    assert lines[2] == "| plain | 50 | 1.00 | 50 | - | 2.0 |"
    assert lines[3].startswith("| trl | 25 |")


def test_counting_collator_counts_real_tokens_of_every_batch() -> None:
    import torch

    def inner(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
        return {"attention_mask": torch.tensor(mask)}

    counter = _CountingCollator(inner)
    counter([{"input_ids": [1, 2, 3]}, {"input_ids": [1]}])
    counter([{"input_ids": [4, 5]}])
    assert counter.tokens == 6  # padding is not a training token
