"""Mean token accuracy on the trained (label) tokens, as OpenAI's fine-tuning events report it
(`train_mean_token_accuracy`, `valid_mean_token_accuracy`).

Counted inside `compute_loss` from the logits it already has (only the positions whose next
token is trained), by argmax, so no logits are kept past the step; the counts are turned into
a share and reset whenever the Trainer logs (`mean_token_accuracy` beside `loss`, and
`eval_mean_token_accuracy` beside `eval_loss`, the names TRL's SFTTrainer uses).
"""

from __future__ import annotations

from typing import Any

from tuner.data import IGNORE_INDEX

__all__ = ["TokenAccuracy", "count_correct"]


def count_correct(logits: Any, labels: Any, ignore_index: int = IGNORE_INDEX) -> tuple[int, int]:
    """(label tokens predicted exactly, label tokens) for `logits` [..., vocab] aligned with
    `labels` [...]: position i's logits predict labels[i]; `ignore_index` is not counted."""
    mask = labels != ignore_index
    hits = (logits.detach().argmax(dim=-1) == labels) & mask
    return int(hits.sum()), int(mask.sum())


class TokenAccuracy:
    """Counts per split ("train" while the model trains, "eval" otherwise) since the last log."""

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {"train": [0, 0], "eval": [0, 0]}

    def update(self, logits: Any, labels: Any, training: bool) -> None:
        correct, total = count_correct(logits, labels)
        counts = self._counts["train" if training else "eval"]
        counts[0] += correct
        counts[1] += total

    def pop(self, split: str) -> float | None:
        """The share since the last pop (None when no label token was seen), then reset."""
        correct, total = self._counts[split]
        self._counts[split] = [0, 0]
        return correct / total if total else None

    def add_to(self, logs: dict[str, Any]) -> None:
        """Put the accuracy beside the loss the Trainer is about to log (its `log` hook)."""
        for split, loss_key, key in (
            ("train", "loss", "mean_token_accuracy"),
            ("eval", "eval_loss", "eval_mean_token_accuracy"),
        ):
            if loss_key in logs:
                value = self.pop(split)
                if value is not None:
                    logs[key] = value
