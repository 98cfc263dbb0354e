"""The machinery shared by the demo task generators: templates, slots, held-out splits.

A task is a set of labels; each label has phrase templates for training and DIFFERENT phrase
templates for testing, and every slot (`{device}`, `{country}`, ...) has training values and
held-out test values. A message is an opener + the label's phrase + a closer, each from the
split's own pool, with light noise (case, punctuation). The validation split uses the training
templates with fresh random draws (it measures fit); the test split uses only held-out
templates, slot values, openers and closers (it measures generalisation).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Example", "LabelSpec", "Split", "TaskSpec", "generate_split", "split_templates"]

Split = Literal["train", "valid", "test"]
_SLOT_RE = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class LabelSpec:
    """One label: a one-line description (for prompts) and its train / held-out phrases."""

    name: str
    description: str
    train: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class TaskSpec:
    """Everything a task generator needs; the instruction and noise are per task."""

    name: str
    title: str  # what the inputs are, e.g. "customer message"
    labels: tuple[LabelSpec, ...]
    # slot -> (training values, held-out test values)
    slots: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]
    openers: tuple[tuple[str, ...], tuple[str, ...]] = (("",), ("",))
    closers: tuple[tuple[str, ...], tuple[str, ...]] = (("",), ("",))
    lowercase_rate: float = 0.2
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    template: str  # the unfilled phrase, so tests can check the held-out split


def split_templates(spec: TaskSpec, split: Split) -> dict[str, tuple[str, ...]]:
    """Label -> the phrase templates a split draws from."""
    test = split == "test"
    return {lab.name: (lab.test if test else lab.train) for lab in spec.labels}


def generate_split(spec: TaskSpec, split: Split, n: int, seed: int) -> list[Example]:
    """`n` examples, labels balanced (round robin, then shuffled), deterministic for `seed`."""
    # The split name is part of the seed so valid never replays train's draws.
    rng = random.Random(f"{spec.name}:{split}:{seed}")
    pool = 1 if split == "test" else 0
    templates = split_templates(spec, split)
    labels = [lab.name for lab in spec.labels]
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        template = rng.choice(templates[label])
        phrase = _fill(template, spec, pool, rng)
        opener = rng.choice(spec.openers[pool])
        closer = rng.choice(spec.closers[pool])
        if opener.endswith(","):
            phrase = phrase[:1].lower() + phrase[1:]
        text = " ".join(part for part in (opener, phrase, closer) if part)
        out.append(Example(_noise(text, spec, rng), label, template))
    rng.shuffle(out)
    return out


def _fill(template: str, spec: TaskSpec, pool: int, rng: random.Random) -> str:
    def value(match: re.Match[str]) -> str:
        slot = match.group(1)
        if slot not in spec.slots:
            raise KeyError(f"task {spec.name}: template {template!r} uses unknown slot {slot!r}")
        return rng.choice(spec.slots[slot][pool])

    text = _SLOT_RE.sub(value, template)
    return text[:1].upper() + text[1:]


def _noise(text: str, spec: TaskSpec, rng: random.Random) -> str:
    # Real tickets are typed in a hurry: some are all lower case, some lack a final period.
    if rng.random() < spec.lowercase_rate:
        text = text.lower()
    if rng.random() < 0.25 and text and text[-1] in ".!":
        text = text[:-1]
    return text


def template_slots(templates: Sequence[str]) -> set[str]:
    return {m for t in templates for m in _SLOT_RE.findall(t)}


def _check_spec(spec: TaskSpec) -> None:
    """Refuse a spec whose held-out split could leak: shared templates or slot values."""
    for lab in spec.labels:
        if not lab.train or not lab.test:
            raise ValueError(f"{spec.name}/{lab.name}: needs train and test templates")
        if set(lab.train) & set(lab.test):
            raise ValueError(f"{spec.name}/{lab.name}: a template is in both splits")
    for slot, (train, test) in spec.slots.items():
        if set(train) & set(test):
            raise ValueError(f"{spec.name}: slot {slot!r} has values in both splits")
    allowed = set(string.ascii_lowercase + "_")
    for slot in spec.slots:
        if not set(slot) <= allowed:
            raise ValueError(f"{spec.name}: bad slot name {slot!r}")
