"""`tuner.evaluate.evaluate` at its backend seam: what each condition sends to be scored."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapters_store.bases import BaseModel
from tuner.backends import ModelSpec
from tuner.data import IGNORE_INDEX, encode_conversation
from tuner.evaluate import Case, evaluate
from tuner.tasks import get_task


class _Recorder:
    """Answers every prompt with its case's label; records what it is asked to score."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.scored: dict[str, list[list[dict[str, Any]]]] = {}

    def generate(self, spec: ModelSpec, prompts: Sequence[Any], max_new_tokens: int) -> list[str]:
        return [self.answers[p[-1]["content"]] for p in prompts]

    def score(self, spec: ModelSpec, conversations: Sequence[Any]) -> list[tuple[float, int]]:
        self.scored.setdefault(spec.name, []).append([list(c) for c in conversations])
        return [(1.0, 1) for _ in conversations]


def test_few_shot_perplexity_scores_only_the_reference_answer(tiny_model: BaseModel) -> None:
    from transformers import AutoTokenizer

    task = get_task("telecom-routing")
    examples = task.generate("test", 4, seed=3)
    cases = [
        Case(
            messages=({"role": "user", "content": e.text},),
            reference=e.label,
        )
        for e in examples
    ]
    fake = _Recorder({e.text: e.label for e in examples})
    result = evaluate(
        cases,
        Path(tiny_model.path),
        ModelSpec(path=Path(tiny_model.path), name="tuned"),
        task=task,
        few_shot_k=1,
        generator=fake,  # type: ignore[arg-type]
        scorer=fake,  # type: ignore[arg-type]
        echo=lambda _: None,
    )
    assert result.conditions["base few-shot"]["accuracy"] == 1.0
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    # The base is scored twice: zero-shot, then few-shot (with prior solved examples).
    zero_shot, few_shot = fake.scored["base"]
    assert all(sum(m["role"] == "assistant" for m in c) > 1 for c in few_shot)
    for conversations in (zero_shot, few_shot):
        for conversation, case in zip(conversations, cases, strict=True):
            enc = encode_conversation(tokenizer, conversation)
            scored = [
                t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX
            ]
            assert tokenizer.decode(scored) == case.reference + tokenizer.eos_token
