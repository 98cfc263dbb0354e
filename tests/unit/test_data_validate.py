"""`tuner.data` validation: one row per problem category (OpenAI's names), plus warnings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from adapters_store.bases import BaseModel
from tuner.data import (
    InvalidDataError,
    load_conversations,
    validate_file,
    validate_records,
)

GOOD: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "Classify."},
        {"role": "user", "content": "my bill is wrong"},
        {"role": "assistant", "content": "billing_dispute"},
    ]
}


def _line(obj: Any) -> str:
    return obj if isinstance(obj, str) else json.dumps(obj)


def _msgs(*messages: Any) -> dict[str, Any]:
    return {"messages": list(messages)}


USER = {"role": "user", "content": "hello"}
ASSISTANT = {"role": "assistant", "content": "roaming"}

# (case id, JSONL line, expected error category)
ERROR_CASES = [
    ("bad-json", '{"messages": [', "invalid_json"),
    ("not-an-object", "[1, 2]", "invalid_json"),
    ("no-messages", {"prompt": "x"}, "missing_messages_list"),
    ("messages-not-list", {"messages": "hi"}, "missing_messages_list"),
    ("messages-empty", {"messages": []}, "missing_messages_list"),
    ("no-role", _msgs({"content": "x"}, ASSISTANT), "message_missing_key"),
    ("no-content-key", _msgs({"role": "user"}, ASSISTANT), "message_missing_key"),
    ("message-not-dict", _msgs("hi", ASSISTANT), "message_missing_key"),
    ("role-tool", _msgs({"role": "tool", "content": "x"}, ASSISTANT), "unrecognized_role"),
    ("role-typo", _msgs({"role": "usr", "content": "x"}, ASSISTANT), "unrecognized_role"),
    ("content-empty", _msgs({"role": "user", "content": "  "}, ASSISTANT), "missing_content"),
    ("content-null", _msgs(USER, {"role": "assistant", "content": None}), "missing_content"),
    ("content-list", _msgs(USER, {"role": "assistant", "content": ["a"]}), "missing_content"),
    (
        "no-assistant",
        _msgs({"role": "system", "content": "s"}, USER),
        "example_missing_assistant_message",
    ),
    (
        "all-weight-zero",
        _msgs(USER, {**ASSISTANT, "weight": 0}),
        "example_missing_assistant_message",
    ),
    ("weight-2", _msgs(USER, {**ASSISTANT, "weight": 2}), "invalid_weight"),
    ("weight-bool", _msgs(USER, {**ASSISTANT, "weight": True}), "invalid_weight"),
    ("weight-on-user", _msgs({**USER, "weight": 1}, ASSISTANT), "invalid_weight"),
]


@pytest.mark.parametrize(
    ("line", "category"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_each_error_category_is_reported_on_its_line(line: Any, category: str) -> None:
    report = validate_records([_line(GOOD), _line(line), _line(GOOD)])
    assert not report.ok
    assert [(p.line, p.category) for p in report.errors] == [(2, category)]
    text = str(report.errors[0])
    assert text.startswith(f"line 2: {category}: ")
    # The good lines still pass: one bad line loses nothing else.
    assert [n for n, _ in report.records] == [1, 3]


def test_valid_weights_and_multi_turn_pass() -> None:
    record = _msgs(USER, {**ASSISTANT, "weight": 0}, USER, {**ASSISTANT, "weight": 1})
    report = validate_records([_line(record)] * 1 + [_line(GOOD)] * 10)
    assert report.errors == []


@pytest.fixture(scope="module")
def tokenizer(tiny_model: BaseModel) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model.path)


def test_too_long_counts_tokens_under_the_chat_template(tokenizer: Any) -> None:
    long = _msgs(USER, {"role": "assistant", "content": "word " * 200})
    report = validate_records([_line(GOOD), _line(long)], tokenizer, max_length=64)
    assert [(p.line, p.category) for p in report.errors] == [(2, "too_long")]
    assert "limit is 64" in report.errors[0].message
    # Without a tokenizer length is not judged.
    assert validate_records([_line(long)]).errors == []


def test_warnings_do_not_fail() -> None:
    no_system = _msgs(USER, ASSISTANT)
    lines = [_line(GOOD), _line(GOOD), _line(no_system)]
    report = validate_records(lines)
    assert report.ok
    cats = {p.category for p in report.warnings}
    assert cats == {"duplicate_example", "missing_system_message", "tiny_dataset"}
    dup = next(p for p in report.warnings if p.category == "duplicate_example")
    assert dup.line == 2 and "line 1" in dup.message
    assert "(warning)" in str(dup)


def test_no_tiny_dataset_warning_from_ten_examples() -> None:
    lines = [
        _line(
            _msgs(
                {"role": "system", "content": "s"}, {"role": "user", "content": f"q{i}"}, ASSISTANT
            )
        )
        for i in range(10)
    ]
    assert validate_records(lines).problems == []


def test_blank_lines_are_skipped_but_counted() -> None:
    report = validate_records(["", _line(GOOD), "   ", '{"x"'])
    assert [(p.line, p.category) for p in report.errors] == [(4, "invalid_json")]


def test_load_conversations_refuses_invalid_file_listing_every_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([_line(GOOD), "nope", _line({"messages": []})]) + "\n")
    with pytest.raises(InvalidDataError) as info:
        load_conversations(path)
    text = str(info.value)
    assert "line 2: invalid_json" in text and "line 3: missing_messages_list" in text
    assert "nothing trained" in text


def test_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"messages": "\xff"}\n')
    with pytest.raises(ValueError, match="not UTF-8"):
        validate_file(path)
