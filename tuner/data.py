"""Chat fine-tuning data: validation (OpenAI's categories), loading, and tokenization with masks.

The format is OpenAI's chat fine-tuning JSONL: one `{"messages": [...]}` object per line, roles
system / user / assistant, and an optional `weight` (0 or 1) on assistant turns: weight 0 keeps
the turn as context but trains nothing on it.

Loss masks come from character offsets, not from token ids: SmolLM2's template writes
`<|im_start|>assistant\\n{content}<|im_end|>\\n`, and `eos == pad == <|im_end|>`, so a mask built
from the pad id would hide the very token that teaches the model to stop. The span trained on
is the assistant content plus its `<|im_end|>`; the `\\n` the template adds after it is not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ROLES",
    "Encoded",
    "InvalidDataError",
    "Problem",
    "Report",
    "dataset_sha256",
    "encode_conversation",
    "load_conversations",
    "render_prompt",
    "validate_file",
    "validate_records",
]

ROLES = ("system", "user", "assistant")
# OpenAI refuses fewer than 10 examples and recommends 50-100 as a start.
MIN_EXAMPLES = 10
IGNORE_INDEX = -100
Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    line: int | None  # 1-based line in the file; None for the dataset as a whole
    category: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        tag = self.category if self.severity == "error" else f"{self.category} (warning)"
        return f"{where}{tag}: {self.message}"


@dataclass
class Report:
    """What validation found: the problems, and the records that passed (with their line)."""

    problems: list[Problem] = field(default_factory=list)
    records: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    lines: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


class InvalidDataError(ValueError):
    """A data file has errors; the message lists each as `line N: category: message`."""

    def __init__(self, path: Path, errors: Sequence[Problem], limit: int = 20) -> None:
        self.path = path
        self.errors = list(errors)
        shown = "\n".join(f"  {p}" for p in self.errors[:limit])
        more = f"\n  ... and {len(self.errors) - limit} more" if len(self.errors) > limit else ""
        super().__init__(f"{path}: {len(self.errors)} error(s), nothing trained:\n{shown}{more}")


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def dataset_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _structure_problems(line: int, record: Any) -> list[Problem]:
    """Errors that need no tokenizer, in OpenAI's categories."""
    if not isinstance(record, dict):
        return [Problem(line, "invalid_json", "each line must be a JSON object")]
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return [Problem(line, "missing_messages_list", 'expected a non-empty "messages" list')]
    out = []
    has_assistant = False
    trainable = False
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            out.append(Problem(line, "message_missing_key", f'{where} needs "role" and "content"'))
            continue
        role = msg["role"]
        if role not in ROLES:
            out.append(
                Problem(
                    line,
                    "unrecognized_role",
                    f"{where}: role {role!r} is not one of {', '.join(ROLES)}",
                )
            )
            continue
        content = msg["content"]
        if not isinstance(content, str) or not content.strip():
            out.append(Problem(line, "missing_content", f"{where} ({role}) has no text content"))
        if "weight" in msg:
            weight = msg["weight"]
            if role != "assistant":
                out.append(Problem(line, "invalid_weight", f"{where}: weight only on assistant"))
            elif weight not in (0, 1) or isinstance(weight, bool):
                out.append(Problem(line, "invalid_weight", f"{where}: weight must be 0 or 1"))
        if role == "assistant":
            has_assistant = True
            trainable = trainable or msg.get("weight", 1) == 1
    if not has_assistant:
        out.append(
            Problem(line, "example_missing_assistant_message", "no assistant message to learn")
        )
    elif not trainable and not out:
        out.append(
            Problem(line, "example_missing_assistant_message", "every assistant turn has weight 0")
        )
    return out


def validate_records(
    lines: Iterable[str], tokenizer: Any | None = None, max_length: int | None = None
) -> Report:
    """Check every line; with a tokenizer, also the length under the model's chat template."""
    report = Report()
    seen: dict[str, int] = {}
    no_system: list[int] = []
    for number, raw in enumerate(lines, start=1):
        report.lines = number
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            report.problems.append(Problem(number, "invalid_json", f"not valid JSON: {exc.msg}"))
            continue
        problems = _structure_problems(number, record)
        if not problems and tokenizer is not None and max_length is not None:
            n = len(encode_conversation(tokenizer, record["messages"]).input_ids)
            if n > max_length:
                problems.append(
                    Problem(number, "too_long", f"{n} tokens, the limit is {max_length}")
                )
        report.problems.extend(problems)
        if problems:
            continue
        report.records.append((number, record))
        if record["messages"][0]["role"] != "system":
            no_system.append(number)
        key = json.dumps(record["messages"], sort_keys=True)
        if key in seen:
            report.problems.append(
                Problem(number, "duplicate_example", f"same as line {seen[key]}", "warning")
            )
        else:
            seen[key] = number
    if no_system:
        shown = ", ".join(map(str, no_system[:10])) + (", ..." if len(no_system) > 10 else "")
        report.problems.append(
            Problem(
                None,
                "missing_system_message",
                f"{len(no_system)} example(s) have no system message (lines {shown}); "
                "the model's default system prompt is used for them",
                "warning",
            )
        )
    if len(report.records) < MIN_EXAMPLES:
        report.problems.append(
            Problem(
                None,
                "tiny_dataset",
                f"{len(report.records)} valid example(s); at least {MIN_EXAMPLES} are needed "
                "for a useful fine-tune, 50-100 to start",
                "warning",
            )
        )
    return report


def validate_file(
    path: Path, tokenizer: Any | None = None, max_length: int | None = None
) -> Report:
    path = Path(path)
    with path.open(encoding="utf-8", errors="strict") as fh:
        try:
            return validate_records(fh, tokenizer, max_length)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from exc


def load_conversations(
    path: Path, tokenizer: Any | None = None, max_length: int | None = None
) -> tuple[list[dict[str, Any]], Report]:
    """The records of a valid file; raises InvalidDataError listing every error otherwise."""
    report = validate_file(path, tokenizer, max_length)
    if report.errors:
        raise InvalidDataError(Path(path), report.errors)
    return [r for _, r in report.records], report


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> str:
    """The text the model sees before it answers (chat template + generation prompt)."""
    return str(
        tokenizer.apply_chat_template(_plain(messages), tokenize=False, add_generation_prompt=True)
    )


def _plain(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def encode_conversation(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> Encoded:
    """Token ids of the whole conversation and labels on trained assistant spans only.

    Each assistant span is located in the rendered text: it starts where the template's
    generation prompt for that turn ends and covers the content plus the end-of-turn token.
    """
    msgs = _plain(messages)
    full = str(tokenizer.apply_chat_template(msgs, tokenize=False))
    eos = tokenizer.eos_token
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant" or msg.get("weight", 1) == 0:
            continue
        prefix = str(
            tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
        )
        start = len(prefix)
        end = start + len(msg["content"])
        if not full.startswith(prefix) or full[start:end] != msg["content"]:
            raise ValueError(
                "the chat template does not render assistant turns as prefix + content; "
                "cannot locate the span to train on"
            )
        if eos and full.startswith(eos, end):
            end += len(eos)
        spans.append((start, end))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and any(s <= a and b <= e for s, e in spans):
            labels[t] = ids[t]
    return Encoded(ids, labels)
