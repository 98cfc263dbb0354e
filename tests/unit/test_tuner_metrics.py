"""Evaluation arithmetic: label metrics, perplexity, cl100k prompt tokens, the readable table."""

from __future__ import annotations

import math

import pytest

from tuner.evaluate import EvalResult, format_table, with_system_prompt
from tuner.metrics import chat_tokens_cl100k, label_metrics, perplexity

LABELS = ["a", "b", "c"]


def test_perfect_predictions() -> None:
    m = label_metrics(["a", "b", "c", "a"], ["a", "b", "c", "a"], LABELS)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["invalid"] == 0
    assert m["per_class_f1"] == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_hand_computed_scores() -> None:
    refs = ["a", "a", "b", "b", "c", "c"]
    preds = ["a", "b", "b", "b", None, "c"]
    m = label_metrics(refs, preds, LABELS)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # a: P=1, R=1/2 -> 2/3; b: P=2/3, R=1 -> 4/5; c: P=1, R=1/2 -> 2/3 (None is no class).
    assert m["per_class_f1"]["a"] == pytest.approx(2 / 3)
    assert m["per_class_f1"]["b"] == pytest.approx(4 / 5)
    assert m["per_class_f1"]["c"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 2 / 3) / 3)
    assert m["invalid"] == 1 and m["n"] == 6


def test_always_one_label_scores_low_macro_f1() -> None:
    refs = ["a", "b", "c"] * 4
    m = label_metrics(refs, ["a"] * 12, LABELS)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["macro_f1"] == pytest.approx((2 * (1 / 3) / (1 + 1 / 3)) / 3)


def test_label_metric_errors() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        label_metrics(["a"], [], LABELS)
    with pytest.raises(ValueError, match="no examples"):
        label_metrics([], [], LABELS)


def test_perplexity_is_token_weighted() -> None:
    assert perplexity([(0.0, 5)]) == 1.0
    assert perplexity([(2.0, 1), (4.0, 3)]) == pytest.approx(math.exp(6 / 4))
    with pytest.raises(ValueError):
        perplexity([(1.0, 0)])


def test_cl100k_chat_count_follows_openai_framing() -> None:
    one = [{"role": "user", "content": "hello world"}]
    # 3 reply priming + 3 framing + "user" (1) + "hello world" (2)
    assert chat_tokens_cl100k(one) == 9
    two = [{"role": "system", "content": "hello world"}, *one]
    assert chat_tokens_cl100k(two) == 9 + 3 + 1 + 2


def test_system_prompt_applied_only_when_absent() -> None:
    user = [{"role": "user", "content": "hi"}]
    assert with_system_prompt(user, "S") == [{"role": "system", "content": "S"}, *user]
    own = [{"role": "system", "content": "mine"}, *user]
    assert with_system_prompt(own, "S") == own
    assert with_system_prompt(user, None) == user


def test_table_shows_conditions_per_class_and_saving() -> None:
    def row(acc: float, tokens: float) -> dict[str, object]:
        return {
            "n": 2,
            "accuracy": acc,
            "macro_f1": acc,
            "invalid": 0,
            "per_class_f1": {"a": acc, "b": 0.5},
            "prompt_tokens": tokens,
            "prompt_tokens_cl100k": tokens * 0.9,
            "perplexity": 3.0,
        }

    result = EvalResult(data="t.jsonl", n=2, backend="transformers")
    result.conditions = {"base few-shot": row(0.25, 400.0), "tuned": row(0.9, 80.0)}
    text = format_table(result)
    assert "base few-shot" in text and "tuned" in text and "0.900" in text
    assert "per-class F1" in text
    assert "80% smaller than the few-shot prompt" in text
