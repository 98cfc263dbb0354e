"""Demo task generators: deterministic, balanced, and a test split that is truly held out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tuner.data import validate_file
from tuner.tasks import TASKS, UnknownTaskError, get_task

TELECOM_LABELS = {
    "billing_dispute",
    "network_outage",
    "device_support",
    "plan_change",
    "cancellation",
    "roaming",
    "account_security",
    "escalate_to_human",
}


def test_three_tasks_and_telecom_labels() -> None:
    assert set(TASKS) == {"telecom-routing", "retail-tagging", "manufacturing-triage"}
    assert set(get_task("telecom-routing").labels) == TELECOM_LABELS
    with pytest.raises(UnknownTaskError, match="known: telecom-routing"):
        get_task("weather")


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_generation_is_deterministic_and_seed_dependent(name: str, split: str) -> None:
    task = get_task(name)
    a = task.generate(split, 50, seed=3)  # type: ignore[arg-type]
    assert a == task.generate(split, 50, seed=3)  # type: ignore[arg-type]
    assert a != task.generate(split, 50, seed=4)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(TASKS))
def test_labels_are_balanced(name: str) -> None:
    task = get_task(name)
    n = 10 * len(task.labels)
    counts = {lab: 0 for lab in task.labels}
    for e in task.generate("train", n):
        counts[e.label] += 1
    assert set(counts.values()) == {10}


@pytest.mark.parametrize("name", list(TASKS))
def test_test_split_uses_only_held_out_templates_and_vocabulary(name: str) -> None:
    task = get_task(name)
    train_templates = {t for ts in task.templates("train").values() for t in ts}
    test_templates = {t for ts in task.templates("test").values() for t in ts}
    assert train_templates and test_templates
    assert not train_templates & test_templates

    test = task.generate("test", 300)
    train = task.generate("train", 2000)
    assert {e.template for e in test} <= test_templates
    assert {e.template for e in train} <= train_templates
    assert not {e.text.lower() for e in test} & {e.text.lower() for e in train}
    # No training slot value shows up in a test example (held-out vocabulary).
    for slot, (train_values, _) in task.spec.slots.items():
        for e in test:
            for value in train_values:
                if len(value) > 3 and "{" + slot + "}" in e.template:
                    assert not re.search(rf"\b{re.escape(value.lower())}\b", e.text.lower()), (
                        slot,
                        value,
                        e.text,
                    )


def test_valid_uses_train_templates_with_fresh_draws() -> None:
    task = get_task("telecom-routing")
    train = {e.text for e in task.generate("train", 200)}
    valid = task.generate("valid", 200)
    train_templates = {t for ts in task.templates("train").values() for t in ts}
    assert {e.template for e in valid} <= train_templates
    assert [e.text for e in valid] != list(train)[:200]


def test_prompts_list_labels_and_few_shot_is_long() -> None:
    task = get_task("telecom-routing")
    for label in task.labels:
        assert label in task.system_prompt
    short = task.messages("my bill is wrong")
    assert short == [
        {"role": "system", "content": task.system_prompt},
        {"role": "user", "content": "my bill is wrong"},
    ]
    few = task.few_shot_messages("my bill is wrong", k=2)
    assert few[-1] == {"role": "user", "content": "my bill is wrong"}
    shots = few[1:-1]
    assert len(shots) == 2 * 2 * len(task.labels)
    assert {m["content"] for m in shots if m["role"] == "assistant"} == set(task.labels)
    assert len(json.dumps(few)) > 5 * len(json.dumps(short))
    # Shots come from training templates only.
    test_texts = {e.text for e in task.generate("test", 200)}
    assert not {m["content"] for m in shots} & test_texts
    assert task.few_shot_messages("x", k=0)[1:] == [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("roaming", "roaming"),
        (" Roaming.", "roaming"),
        ("`plan_change`", "plan_change"),
        ("The label is: network outage", "network_outage"),
        ("cancellation or maybe roaming", "cancellation"),
        ("I think billing_dispute", "billing_dispute"),
        ("no idea", None),
        ("", None),
    ],
)
def test_parse_label(output: str, expected: str | None) -> None:
    assert get_task("telecom-routing").parse_label(output) == expected


def test_write_demo_writes_valid_files_and_never_overwrites(tmp_path: Path) -> None:
    task = get_task("retail-tagging")
    paths = task.write_demo(tmp_path / "d", sizes={"train": 30, "valid": 6, "test": 12})
    assert sorted(paths) == ["test", "train", "valid"]
    for split, n in (("train", 30), ("valid", 6), ("test", 12)):
        report = validate_file(paths[split])  # type: ignore[index]
        assert report.errors == [] and len(report.records) == n
        first = report.records[0][1]["messages"]
        assert first[0] == {"role": "system", "content": task.system_prompt}
        assert first[-1]["content"] in task.labels
    before = paths["train"].read_bytes()  # type: ignore[index]
    with pytest.raises(FileExistsError):
        task.write_demo(tmp_path / "d", sizes={"train": 5})
    assert paths["train"].read_bytes() == before  # type: ignore[index]


def test_generated_data_folder_names_the_generator_revision(tmp_path: Path) -> None:
    import dataclasses

    from tuner.recipe import Recipe
    from tuner.train import prepare_data

    task = get_task("telecom-routing")
    assert task.fingerprint == get_task("telecom-routing").fingerprint
    assert len({get_task(n).fingerprint for n in TASKS}) == len(TASKS)
    changed = dataclasses.replace(task.spec, lowercase_rate=0.5)
    assert dataclasses.replace(task, spec=changed).fingerprint != task.fingerprint
    recipe = Recipe(name="t", task="telecom-routing", n_train=8, n_valid=0, n_test=8)
    files = prepare_data(recipe, tmp_path, echo=lambda _: None)
    assert files.train.parent.name == f"seed0-8-0-8-{task.fingerprint}"
    assert files.train.is_file() and files.test is not None and files.test.is_file()
