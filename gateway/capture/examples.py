"""Training examples from captures, in OpenAI's chat fine-tuning JSONL shape
(`{"messages": [system?, user, ..., assistant]}`, what `tunegate data validate` checks):

- `stored_examples`: stored completions (`store: true`) picked by metadata and model, the
  model's answer as the assistant turn (OpenAI's distillation from stored completions);
- `retraining_examples`: captured requests of one artifact that got a corrected answer
  through `POST /v1/feedback`, the correction in place of the model's answer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.capture.store import Capture, CaptureStore

__all__ = ["Examples", "retraining_examples", "stored_examples"]


@dataclass
class Examples:
    """What a conversion made, and what it left out and why (for the user to read)."""

    examples: list[dict[str, Any]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, capture: Capture, messages: list[dict[str, str]]) -> None:
        self.examples.append({"messages": messages})
        self.request_ids.append(capture.request_id)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _example(
    capture: Capture, answer: str, with_system_prompt: bool
) -> list[dict[str, str]] | None:
    messages = capture.conversation(with_system_prompt)
    # A fine-tuning example ends with the assistant's answer; a conversation that already
    # ends with an assistant turn (a prefill) has nothing to learn after it.
    if not messages or messages[-1]["role"] not in ("user", "system") or not answer.strip():
        return None
    return [*messages, {"role": "assistant", "content": answer}]


def stored_examples(
    store: CaptureStore,
    metadata: Mapping[str, str],
    model: str | None = None,
    since: float | None = None,
    key_id: str | None = None,
) -> Examples:
    """Stored chat completions whose metadata has every pair of `metadata`, oldest first;
    `model`: as requested (`telecom@prod`), the version that answered or its name;
    `key_id`: only those sent with that API key (None: every caller's)."""
    out = Examples()
    found = store.find(
        stored=True, operation="chat", since=since, metadata=metadata, model=model, key_id=key_id
    )
    for capture in found:
        messages = _example(capture, capture.response, with_system_prompt=False)
        if messages is None:
            out.skip("empty answer or no user turn")
            continue
        out.add(capture, messages)
    return out


def _corrections(accounting_path: Path) -> dict[str, str]:
    """The latest correction per request id, from the feedback table beside accounting."""
    if not accounting_path.is_file():
        return {}
    conn = sqlite3.connect(f"file:{accounting_path}?mode=ro", uri=True, timeout=30.0)
    try:
        rows = conn.execute(
            "SELECT request_id, correction FROM feedback WHERE correction IS NOT NULL "
            "ORDER BY created_at, rowid"
        ).fetchall()
    except sqlite3.OperationalError:  # no feedback table yet: no feedback was ever given
        return {}
    finally:
        conn.close()
    return {request_id: correction for request_id, correction in rows}


def retraining_examples(store: CaptureStore, accounting_path: Path, artifact: str) -> Examples:
    """Examples for retraining `artifact` (`name`: every version, `name@N`: that one): each
    captured chat request of it with a corrected answer becomes the conversation as the
    model saw it (its system prompt first) answered by the latest correction."""
    corrections = _corrections(accounting_path)
    out = Examples()
    # By what answered, not what was asked: `telecom@prod` may have meant any version.
    for capture in store.find(operation="chat", artifact=artifact):
        correction = corrections.get(capture.request_id)
        if correction is None:
            continue
        messages = _example(capture, correction, with_system_prompt=True)
        if messages is None:
            out.skip("no user turn")
            continue
        out.add(capture, messages)
    return out
