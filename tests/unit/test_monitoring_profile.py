"""The tuner's training profile: rendered with the real tokenizer, labels from the task or
inferred from the answers, and rebuilt for cards published before profiles existed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from adapters_store import BaseModel
from adapters_store.profile import OTHER, TrainingProfile
from tuner.data import dataset_sha256, render_prompt
from tuner.profile import infer_labels, profile_from_card, profile_training_data
from tuner.recipe import Recipe
from tuner.tasks import get_task
from tuner.train import prepare_data

TASK = "telecom-routing"


def _recipe() -> Recipe:
    return Recipe(name="t", task=TASK, base="tiny-random-llama", n_train=40, n_valid=8, n_test=8)


def test_profile_of_task_data_with_the_real_tokenizer(home: Path, tiny_model: BaseModel) -> None:
    data = prepare_data(_recipe(), home, echo=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    task = get_task(TASK)
    profile = profile_training_data(data.train, tokenizer, task.labels, data.valid)
    assert profile.examples == 40
    assert profile.labels == task.labels
    assert sum(profile.label_counts.values()) == 40
    assert OTHER not in profile.label_counts  # every training answer is a label
    assert profile.vocab_size == len(tokenizer)
    # A training prompt, rendered as the gateway renders a chat request, is all seen.
    first = json.loads(data.train.read_text().splitlines()[0])["messages"][:-1]
    ids = tokenizer(render_prompt(tokenizer, first), add_special_tokens=False)["input_ids"]
    assert profile.oov_share(ids) == 0.0
    assert profile.heldout_oov_share is not None and 0 <= profile.heldout_oov_share < 0.5
    assert TrainingProfile.from_card({"profile": profile.to_card()}) is not None


@pytest.mark.parametrize(
    ("answers", "labels"),
    [
        (["Yes", "no", "yes", "No"], ("no", "yes")),
        (["yes", "no", "maybe"], ()),  # each answer once: not a label set
        ([f"answer {i}" for i in range(40)] * 2, ()),  # too many distinct answers
        (["a long free text answer that goes on and on and on and on"] * 3, ()),
        ([], ()),
    ],
)
def test_labels_are_inferred_only_from_a_classifier_like_answer_set(
    answers: list[str], labels: tuple[str, ...]
) -> None:
    assert infer_labels(answers) == labels


def test_profile_is_rebuilt_from_the_recipe_data_for_an_old_card(
    home: Path, tiny_model: BaseModel
) -> None:
    recipe = _recipe()
    data = prepare_data(recipe, home, echo=lambda _: None)
    card = {"recipe": recipe.to_dict(), "dataset_sha256": dataset_sha256(data.train)}
    rebuilt = profile_from_card(card, home)
    assert rebuilt is not None and rebuilt.examples == 40
    assert rebuilt.labels == get_task(TASK).labels
    # Other data than the card's (the hash differs), or no recipe: no profile, not a wrong one.
    assert profile_from_card({**card, "dataset_sha256": "0" * 64}, home) is None
    assert profile_from_card({"labels": ["a"]}, home) is None
