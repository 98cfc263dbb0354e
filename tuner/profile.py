"""The training profile of a run, for the card: labels, prompt lengths, token ids seen.

Prompts are rendered and tokenized as the gateway renders a chat request (the chat template
with the generation prompt, no extra special tokens), so a live prompt's length and token
ids are comparable with these.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapters_store.profile import TrainingProfile
from tuner.data import render_prompt

__all__ = ["infer_labels", "profile_from_card", "profile_training_data"]

# A user's data (no demo task) is treated as a label task when its answers are this few
# distinct short strings, each given more than once: a classifier's training set.
_MAX_INFERRED_LABELS = 32
_MAX_LABEL_CHARS = 48


def _split(path: Path) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """(prompt messages, final answer) of every record with an assistant turn last."""
    prompts: list[list[dict[str, Any]]] = []
    answers: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            messages = json.loads(line)["messages"]
            if messages and messages[-1]["role"] == "assistant":
                prompts.append(messages[:-1])
                answers.append(str(messages[-1]["content"]))
    return prompts, answers


def infer_labels(answers: Sequence[str]) -> tuple[str, ...]:
    """The closed label set the answers form, or () when they look like free text."""
    counts = Counter(a.strip().lower() for a in answers)
    if not counts or len(counts) > _MAX_INFERRED_LABELS:
        return ()
    if any(len(a) > _MAX_LABEL_CHARS or "\n" in a or n < 2 for a, n in counts.items()):
        return ()
    return tuple(sorted(counts))


def profile_training_data(
    train: Path,
    tokenizer: Any,
    labels: Sequence[str] = (),
    heldout: Path | None = None,
) -> TrainingProfile:
    """The profile of `train` (and the held-out OOV baseline from `heldout`); `labels` is the
    task's label set, inferred from the answers when empty."""
    prompts, answers = _split(train)

    def ids(messages: list[dict[str, Any]]) -> list[int]:
        text = render_prompt(tokenizer, messages)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    held = [ids(m) for m in _split(heldout)[0]] if heldout is not None else []
    return TrainingProfile.build(
        [ids(m) for m in prompts],
        answers,
        tuple(labels) or infer_labels(answers),
        vocab_size=len(tokenizer),
        heldout=held,
    )


def profile_from_card(card: dict[str, Any], home: Path) -> TrainingProfile | None:
    """The profile of an artifact published before cards carried one, rebuilt from the
    training data its recipe names (regenerated for a demo task), if that data still hashes
    to the card's `dataset_sha256`; None otherwise (no recipe, data gone or changed)."""
    stored = TrainingProfile.from_card(card)
    if stored is not None or not isinstance(card.get("recipe"), dict):
        return stored
    # Only for old cards: these pull in transformers and the training stack.
    from transformers import AutoTokenizer

    from tuner.data import dataset_sha256
    from tuner.recipe import RecipeError, build_recipe
    from tuner.tasks import get_task
    from tuner.train import TrainingError, ensure_base, prepare_data

    try:
        recipe = build_recipe(card["recipe"], where="the card's recipe")
        data = prepare_data(recipe, home, echo=lambda _: None)
    except (RecipeError, TrainingError, OSError, ValueError, LookupError):
        return None
    if card.get("dataset_sha256") and dataset_sha256(data.train) != card["dataset_sha256"]:
        return None
    base = ensure_base(home / "models", recipe.base)
    labels = get_task(recipe.task).labels if recipe.task else ()
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    return profile_training_data(data.train, tokenizer, labels, data.valid or data.test)
