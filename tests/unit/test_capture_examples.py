"""Captures -> chat fine-tuning examples, over the real SQLite files: stored completions
picked by metadata/model/time, and corrected feedback in place of the model's answer. Every
example made must pass the tuner's own validation."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from adapters_store.bases import BaseModel
from gateway.capture import Capture, CaptureStore
from gateway.capture.examples import retraining_examples, stored_examples
from gateway.capture.testing import sample_capture
from gateway.feedback import FeedbackStore
from tuner.data import validate_records

NOW = time.time()
USER = [{"role": "user", "content": "my bill is wrong"}]


def _capture(request_id: str, at: float = NOW - 60, **extra: Any) -> Capture:
    return sample_capture(request_id, **{"created_at": at, "artifact": "telecom@2", **extra})


@pytest.fixture
def store(tmp_path: Path) -> CaptureStore:
    store = CaptureStore(tmp_path / "captures.sqlite3")
    yield store  # type: ignore[misc]
    store.close()


def _valid(examples: list[dict[str, Any]], tiny_model: BaseModel) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    text = "".join(json.dumps(e) + "\n" for e in examples)
    report = validate_records(io.StringIO(text), tokenizer, 512)
    assert report.ok and not report.errors, report.errors  # warnings: few examples
    assert len(report.records) == len(examples)


def test_stored_completions_become_examples(store: CaptureStore, tiny_model: BaseModel) -> None:
    store.write(
        [
            _capture(
                "a", request={"messages": [{"role": "developer", "content": "Route."}, *USER]}
            ),
            _capture("b", metadata={"task": "routing", "run": "2"}, response="outage"),
            _capture("other-task", metadata={"task": "tagging"}),
            _capture("not-stored", stored=False),
            _capture("text", operation="text_completion", request={"prompt": "x"}),
            _capture("empty", response="  "),
            _capture("old", at=NOW - 7200),
            _capture("beta", requested_model="beta", artifact="beta@1"),
            _capture(
                "parts",
                request={
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
                },
            ),
        ]
    )
    found = stored_examples(store, {"task": "routing"}, since=NOW - 3600)
    assert found.request_ids == ["a", "b", "beta", "parts"]
    assert found.skipped == {"empty answer or no user turn": 1}
    assert found.examples[0]["messages"] == [
        {"role": "system", "content": "Route."},
        *USER,
        {"role": "assistant", "content": "billing"},
    ]
    assert found.examples[-1]["messages"][0] == {"role": "user", "content": "hi"}
    _valid(found.examples, tiny_model)

    assert stored_examples(store, {"task": "routing", "run": "2"}).request_ids == ["b"]
    for ref in ("telecom", "telecom@2", "telecom@prod"):
        assert "beta" not in stored_examples(store, {"task": "routing"}, ref).request_ids
    assert stored_examples(store, {"task": "routing"}, "beta").request_ids == ["beta"]
    assert stored_examples(store, {"task": "nothing"}).examples == []


def test_corrections_replace_the_answer(
    store: CaptureStore, tmp_path: Path, tiny_model: BaseModel
) -> None:
    accounting = tmp_path / "accounting.sqlite3"
    assert retraining_examples(store, accounting, "telecom").examples == []  # no file yet
    store.write(
        [
            _capture("r1", stored=False, system_prompt="Answer with one label."),
            _capture("r2", artifact="telecom@1"),
            _capture("r3"),  # rated only, no correction
            _capture("r4", artifact="beta@1"),
            _capture("r5", operation="text_completion", request={"prompt": "x"}),
        ]
    )
    feedback = FeedbackStore(accounting)
    feedback.add("r1", "acme", None, "outage")
    feedback.add("r1", "acme", 1.0, "network")  # the latest correction wins
    feedback.add("r2", "acme", None, "billing")
    feedback.add("r3", "acme", -1.0, None)
    feedback.add("r4", "acme", None, "sales")
    feedback.add("r5", "acme", None, "x")

    found = retraining_examples(store, accounting, "telecom")
    assert found.request_ids == ["r1", "r2"]
    assert found.examples[0]["messages"] == [
        {"role": "system", "content": "Answer with one label."},  # as the model saw it
        *USER,
        {"role": "assistant", "content": "network"},
    ]
    assert retraining_examples(store, accounting, "telecom@1").request_ids == ["r2"]
    assert retraining_examples(store, accounting, "telecom@prod").request_ids == []
    assert retraining_examples(store, accounting, "beta").request_ids == ["r4"]
    _valid(found.examples, tiny_model)
