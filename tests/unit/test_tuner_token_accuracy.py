"""Mean token accuracy on label tokens: argmax hits over the positions that are trained."""

from __future__ import annotations

import pytest
import torch

from tuner.data import IGNORE_INDEX
from tuner.token_accuracy import TokenAccuracy, count_correct


def _logits(predicted: list[list[int]], vocab: int = 5) -> torch.Tensor:
    """Logits whose argmax at [b, t] is predicted[b][t]."""
    out = torch.zeros(len(predicted), len(predicted[0]), vocab)
    for b, row in enumerate(predicted):
        for t, token in enumerate(row):
            out[b, t, token] = 3.0
    return out


# Two rows of four positions; -100 marks prompt/padding positions that are not trained.
PREDICTED = [[1, 2, 3, 4], [0, 0, 2, 2]]
LABELS = [[IGNORE_INDEX, 2, 3, 0], [0, IGNORE_INDEX, IGNORE_INDEX, 1]]


def test_counts_only_label_tokens() -> None:
    # Row 0: labels at t=1,2,3 -> hits at 1 and 2; row 1: label at t=0 (hit) and t=3 (miss).
    # The ignored positions would be hits for t=2 of row 1 and misses elsewhere: not counted.
    assert count_correct(_logits(PREDICTED), torch.tensor(LABELS)) == (3, 5)


def test_all_ignored_is_zero_of_zero() -> None:
    labels = torch.full((2, 4), IGNORE_INDEX)
    assert count_correct(_logits(PREDICTED), labels) == (0, 0)


def test_bf16_logits_and_grad_are_fine() -> None:
    logits = _logits(PREDICTED).to(torch.bfloat16).requires_grad_()
    assert count_correct(logits, torch.tensor(LABELS)) == (3, 5)


def test_splits_accumulate_until_logged_then_reset() -> None:
    acc = TokenAccuracy()
    logits, labels = _logits(PREDICTED), torch.tensor(LABELS)
    acc.update(logits, labels, training=True)  # 3 of 5
    acc.update(logits[:1], torch.tensor([[1, 2, 0, 0]]), training=True)  # 2 of 4
    acc.update(logits[1:], labels[1:], training=False)  # 1 of 2

    logs: dict[str, float] = {"loss": 1.5, "learning_rate": 1e-3}
    acc.add_to(logs)
    assert logs["mean_token_accuracy"] == pytest.approx(5 / 9)
    assert "eval_mean_token_accuracy" not in logs

    evals: dict[str, float] = {"eval_loss": 2.0}
    acc.add_to(evals)
    assert evals == {"eval_loss": 2.0, "eval_mean_token_accuracy": 0.5}

    # Reset after each log: nothing seen since, so nothing is added (not a stale 5/9).
    again: dict[str, float] = {"loss": 1.0}
    acc.add_to(again)
    assert again == {"loss": 1.0}


def test_logs_without_a_loss_are_left_alone() -> None:
    acc = TokenAccuracy()
    acc.update(_logits(PREDICTED), torch.tensor(LABELS), training=True)
    summary: dict[str, float] = {"train_loss": 1.2, "train_runtime": 3.0}
    acc.add_to(summary)
    assert "mean_token_accuracy" not in summary
    assert acc.pop("train") == pytest.approx(3 / 5)  # still there for the next step log
