"""Evaluation: the same test set through the base model and the tuned artifact.

Conditions, each on every test example:
- `base zero-shot`: the base model with the short prompt (the task's system prompt),
- `base few-shot`: the base model with the long prompt (label descriptions + k examples each),
- `tuned`: the artifact with its conversation's system message, or the system prompt from
  its card when the conversation has none (what the gateway does for clients).

For label tasks each condition gets accuracy, macro-F1 and per-class F1; every condition gets
prompt tokens per request (the model's tokenizer and cl100k_base) and perplexity of the
reference answers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.backends import Backend, ModelSpec, TransformersBackend
from tuner.data import load_conversations, render_prompt
from tuner.metrics import chat_tokens_cl100k, label_metrics, perplexity
from tuner.tasks import Task

__all__ = [
    "Case",
    "Condition",
    "EvalResult",
    "evaluate",
    "format_table",
    "load_cases",
    "with_system_prompt",
]

Message = dict[str, Any]
Printer = Callable[[str], None]


@dataclass(frozen=True)
class Case:
    """One test example: the conversation up to the answer, and the reference answer."""

    messages: tuple[Message, ...]
    reference: str

    @property
    def user_text(self) -> str:
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")


@dataclass(frozen=True)
class Condition:
    name: str
    spec: ModelSpec
    build: Callable[[Case], list[Message]]


@dataclass
class EvalResult:
    data: str
    n: int
    backend: str
    conditions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "n": self.n,
            "backend": self.backend,
            "conditions": self.conditions,
        }


def load_cases(path: Path, limit: int = 0) -> list[Case]:
    """Test conversations; each must end with the assistant's reference answer."""
    records, _ = load_conversations(path)
    cases = []
    for number, record in enumerate(records, start=1):
        messages = record["messages"]
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"{path}: example {number} does not end with the reference answer")
        cases.append(
            Case(
                tuple({"role": m["role"], "content": m["content"]} for m in messages[:-1]),
                messages[-1]["content"],
            )
        )
    return cases[:limit] if limit else cases


def with_system_prompt(messages: Sequence[Message], system_prompt: str | None) -> list[Message]:
    """The conversation as given, or with `system_prompt` first when it has none."""
    out = [dict(m) for m in messages]
    if system_prompt and (not out or out[0]["role"] != "system"):
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def evaluate(
    cases: Sequence[Case],
    base_path: Path,
    artifact: ModelSpec,
    *,
    task: Task | None,
    labels: Sequence[str] | None = None,
    system_prompt: str | None = None,
    few_shot_k: int = 2,
    generator: Backend | None = None,
    backend_name: str = "transformers",
    scorer: TransformersBackend | None = None,
    data_name: str = "",
    echo: Printer = print,
    others: Mapping[str, ModelSpec] | None = None,
) -> EvalResult:
    """Score every condition on `cases`; `labels` enable label metrics (default: the task's).

    `others` are more models prompted like the artifact (e.g. a distilled student's teacher),
    scored before it under their own condition names.
    """
    if not cases:
        raise ValueError("no test examples")
    labels = list(labels or (task.labels if task else ()))
    short = system_prompt or (task.system_prompt if task else None)
    base = ModelSpec(path=base_path, name="base")

    conditions: list[Condition] = []
    if task is not None or short:
        conditions.append(
            Condition("base zero-shot", base, lambda c: with_system_prompt(c.messages, short))
        )
    if task is not None and few_shot_k > 0:
        conditions.append(
            Condition(
                "base few-shot",
                base,
                lambda c: task.few_shot_messages(c.user_text, k=few_shot_k),
            )
        )
    for name, spec in (others or {}).items():
        conditions.append(
            Condition(name, spec, lambda c: with_system_prompt(c.messages, system_prompt))
        )
    conditions.append(
        Condition("tuned", artifact, lambda c: with_system_prompt(c.messages, system_prompt))
    )

    scorer = scorer or TransformersBackend()
    generator = generator or scorer
    result = EvalResult(data=data_name, n=len(cases), backend=backend_name)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    max_new = _max_new_tokens(tokenizer, labels)
    for cond in conditions:
        started = time.perf_counter()
        prompts = [cond.build(c) for c in cases]
        outputs = generator.generate(cond.spec, prompts, max_new)
        row: dict[str, Any] = {}
        if labels and task is not None:
            predictions = [task.parse_label(o) for o in outputs]
        elif labels:
            predictions = [_parse_against(o, labels) for o in outputs]
        else:
            predictions = []
        if labels:
            row.update(label_metrics([c.reference for c in cases], predictions, labels))
        else:
            row["n"] = len(cases)
            row["exact_match"] = sum(
                o.strip() == c.reference.strip() for o, c in zip(outputs, cases, strict=True)
            ) / len(cases)
        row["prompt_tokens"] = statistics.fmean(
            len(tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"])
            for p in prompts
        )
        row["prompt_tokens_cl100k"] = statistics.fmean(chat_tokens_cl100k(p) for p in prompts)
        # Perplexity of the reference answer only: a few-shot prompt's solved examples are
        # prior assistant turns, which must not be scored (and, scored, they would also stop
        # the shared prompt from being computed once per batch).
        full = [
            [*_context_only(p), {"role": "assistant", "content": c.reference}]
            for p, c in zip(prompts, cases, strict=True)
        ]
        row["perplexity"] = perplexity(scorer.score(cond.spec, full))
        row["seconds"] = round(time.perf_counter() - started, 1)
        row["examples"] = [
            {"output": o, "reference": c.reference}
            for o, c in list(zip(outputs, cases, strict=True))[:3]
        ]
        result.conditions[cond.name] = row
        echo(f"evaluated {cond.name}: {_summary(row)} ({row['seconds']} s)")
    return result


def _context_only(messages: Sequence[Message]) -> list[Message]:
    """`messages` with every assistant turn weighted 0 (context, not scored)."""
    return [{**m, "weight": 0} if m["role"] == "assistant" else dict(m) for m in messages]


def _parse_against(output: str, labels: Sequence[str]) -> str | None:
    norm = output.strip().lower()
    return norm if norm in labels else None


def _max_new_tokens(tokenizer: Any, labels: Sequence[str]) -> int:
    """Room for the longest label and its end-of-turn token, plus slack for stray words."""
    if not labels:
        return 128
    longest = max(len(tokenizer(lab, add_special_tokens=False)["input_ids"]) for lab in labels)
    return longest + 4


def _summary(row: dict[str, Any]) -> str:
    parts = []
    if "macro_f1" in row:
        parts.append(f"accuracy {row['accuracy']:.3f}, macro-F1 {row['macro_f1']:.3f}")
    parts.append(f"{row['prompt_tokens']:.0f} prompt tokens")
    parts.append(f"perplexity {row['perplexity']:.2f}")
    return ", ".join(parts)


def format_table(result: EvalResult) -> str:
    """A readable comparison: one row per condition, then per-class F1 when there are labels."""
    rows = result.conditions
    has_labels = any("macro_f1" in r for r in rows.values())
    head = ["condition"]
    if has_labels:
        head += ["accuracy", "macro-F1", "invalid"]
    else:
        head += ["exact"]
    head += ["prompt tok", "cl100k tok", "perplexity"]
    table = [head]
    for name, r in rows.items():
        line = [name]
        if has_labels:
            line += [f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}", str(r["invalid"])]
        else:
            line += [f"{r['exact_match']:.3f}"]
        line += [
            f"{r['prompt_tokens']:.1f}",
            f"{r['prompt_tokens_cl100k']:.1f}",
            f"{r['perplexity']:.3g}",
        ]
        table.append(line)
    out = [f"{result.data}: {result.n} examples, generation by {result.backend}", _grid(table)]
    if has_labels:
        labels = list(next(iter(rows.values()))["per_class_f1"])
        per = [["per-class F1", *rows]]
        per += [[lab, *(f"{r['per_class_f1'][lab]:.3f}" for r in rows.values())] for lab in labels]
        out += ["", _grid(per)]
    few, tuned = rows.get("base few-shot"), rows.get("tuned")
    if few and tuned and few["prompt_tokens"]:
        saved = 1 - tuned["prompt_tokens"] / few["prompt_tokens"]
        out += ["", f"tuned prompt is {saved:.0%} smaller than the few-shot prompt"]
    return "\n".join(out)


def _grid(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
