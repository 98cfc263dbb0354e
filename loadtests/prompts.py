"""Turn chat fine-tuning JSONL into the requests each strategy sends.

A test example is `{"messages": [system?, user, assistant]}`: everything before the last
assistant turn is the question, the last assistant turn is the expected answer.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.scenario import ScenarioError, Strategy

__all__ = ["Example", "Prompt", "answers_match", "build_prompts", "load_examples"]

Message = dict[str, Any]


@dataclass(frozen=True)
class Example:
    messages: tuple[Message, ...]  # the question: every turn before the final answer
    expected: str | None  # the final assistant turn, when the data has one


@dataclass(frozen=True)
class Prompt:
    messages: list[Message]
    expected: str | None


def load_examples(path: Path) -> list[Example]:
    examples = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            messages = row["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list")
        except (ValueError, KeyError, TypeError) as exc:
            raise ScenarioError(f"{path}: line {number}: not a chat example: {exc}") from exc
        expected = None
        if messages[-1].get("role") == "assistant":
            expected = str(messages[-1].get("content", ""))
            messages = messages[:-1]
        examples.append(Example(tuple(messages), expected))
    if not examples:
        raise ScenarioError(f"{path}: no examples")
    return examples


def build_prompts(
    strategy: Strategy, examples: list[Example], pool: list[Example] | None, seed: int
) -> list[Prompt]:
    """The requests of one strategy, one per test example, in the examples' order."""
    if strategy.prompt == "short":
        return [Prompt([dict(m) for m in ex.messages], ex.expected) for ex in examples]
    if strategy.prompt == "bare":
        return [
            Prompt([dict(m) for m in ex.messages if m.get("role") != "system"], ex.expected)
            for ex in examples
        ]
    solved = [ex for ex in (pool or []) if ex.expected is not None]
    if len(solved) < strategy.k:
        raise ScenarioError(
            f"strategy {strategy.name!r} wants {strategy.k} few-shot examples, "
            f"the pool has {len(solved)} with answers"
        )
    # The same shots for every request (a fixed prompt prefix, as a real app would use),
    # chosen to cover as many distinct answers as possible.
    shots = _diverse_shots(solved, strategy.k, random.Random(seed))
    prompts = []
    for ex in examples:
        system = [dict(m) for m in ex.messages if m.get("role") == "system"]
        turns: list[Message] = []
        for shot in shots:
            turns += [dict(m) for m in shot.messages if m.get("role") != "system"]
            turns.append({"role": "assistant", "content": shot.expected})
        question = [dict(m) for m in ex.messages if m.get("role") != "system"]
        prompts.append(Prompt(system + turns + question, ex.expected))
    return prompts


def _diverse_shots(solved: list[Example], k: int, rng: random.Random) -> list[Example]:
    by_answer: dict[str, list[Example]] = {}
    for ex in solved:
        by_answer.setdefault(str(ex.expected), []).append(ex)
    groups = [rng.sample(g, len(g)) for _, g in sorted(by_answer.items())]
    shots: list[Example] = []
    while len(shots) < k:
        for group in groups:
            if group and len(shots) < k:
                shots.append(group.pop())
    rng.shuffle(shots)
    return shots


_PUNCT = re.compile(r"^[\s\"'`*.:;,!-]+|[\s\"'`*.:;,!-]+$")


def answers_match(answer: str, expected: str) -> bool:
    """A label answer is right when it equals the expected label up to case, surrounding
    punctuation and whitespace; for multi-line answers the first line counts."""
    first = answer.strip().splitlines()[0] if answer.strip() else ""
    return _PUNCT.sub("", first).lower() == _PUNCT.sub("", expected.strip()).lower()
