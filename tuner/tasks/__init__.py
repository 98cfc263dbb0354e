"""The demo tasks: deterministic data generators, their prompts and their label parser.

Used by `tunegate data demo`, the recipes, evaluation, the load tests and the gateway's eval:

    task = get_task("telecom-routing")
    task.labels                      # ("billing_dispute", ...)
    task.system_prompt               # the short prompt adapters are trained with
    task.messages(text)              # short-prompt conversation for one input
    task.few_shot_messages(text, k)  # long prompt with k examples per label (the baseline)
    task.parse_label(model_output)   # -> label or None
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.tasks import manufacturing, retail, telecom
from tuner.tasks._gen import Example, Split, TaskSpec, _check_spec, generate_split, split_templates

__all__ = [
    "DEFAULT_SIZES",
    "TASKS",
    "Example",
    "Task",
    "UnknownTaskError",
    "get_task",
    "task_names",
]

Message = dict[str, Any]

# Examples per split written by `tunegate data demo` unless told otherwise.
DEFAULT_SIZES: dict[Split, int] = {"train": 800, "valid": 80, "test": 200}


class UnknownTaskError(LookupError):
    """No demo task has this name."""


@dataclass(frozen=True)
class Task:
    spec: TaskSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(lab.name for lab in self.spec.labels)

    @property
    def system_prompt(self) -> str:
        """Short: the instruction and the label names, nothing else (what adapters learn)."""
        return (
            f"Classify the {self.spec.title}. Answer with exactly one label: "
            + ", ".join(self.labels)
            + "."
        )

    def generate(self, split: Split, n: int, seed: int = 0) -> list[Example]:
        return generate_split(self.spec, split, n, seed)

    def templates(self, split: Split) -> dict[str, tuple[str, ...]]:
        return split_templates(self.spec, split)

    def messages(self, text: str, system_prompt: str | None = None) -> list[Message]:
        """The short-prompt conversation for one input (no answer)."""
        return [
            {"role": "system", "content": system_prompt or self.system_prompt},
            {"role": "user", "content": text},
        ]

    def record(self, example: Example) -> dict[str, Any]:
        """One fine-tuning JSONL record: short prompt, input, the label as the answer."""
        return {
            "messages": [
                *self.messages(example.text),
                {"role": "assistant", "content": example.label},
            ]
        }

    def few_shot_system_prompt(self) -> str:
        """The long instruction a generic model needs: every label with its meaning."""
        lines = [
            f"You are a classifier. Read the {self.spec.title} and decide which label fits it.",
            "The labels and what they mean:",
        ]
        lines += [f"- {lab.name}: {lab.description}" for lab in self.spec.labels]
        lines.append(
            "Answer with exactly one label from the list, written exactly as shown, "
            "and nothing else."
        )
        return "\n".join(lines)

    def few_shot_messages(self, text: str, k: int = 2, seed: int = 0) -> list[Message]:
        """The baseline's long prompt: instructions, then `k` solved examples per label.

        Examples come from the training generator (never the test templates) and are shown as
        prior chat turns, the format instruction-tuned models follow best.
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        shots = self.generate("train", k * len(self.labels), seed=10_000 + seed)
        random.Random(seed).shuffle(shots)
        out: list[Message] = [{"role": "system", "content": self.few_shot_system_prompt()}]
        for shot in shots:
            out.append({"role": "user", "content": shot.text})
            out.append({"role": "assistant", "content": shot.label})
        out.append({"role": "user", "content": text})
        return out

    def parse_label(self, output: str) -> str | None:
        """The label a model's answer names, or None when it names none.

        Exact answers are the norm for tuned models; a base model may wrap the label in prose
        or write it with spaces, so the earliest label mentioned anywhere counts.
        """
        norm = output.strip().strip("`'\".:;!").lower()
        if norm in self.labels:
            return norm
        best: tuple[int, str] | None = None
        for variant in (norm, norm.replace(" ", "_")):
            for label in self.labels:
                pos = variant.find(label)
                if pos >= 0 and (best is None or pos < best[0]):
                    best = (pos, label)
        return best[1] if best else None

    def write_demo(
        self,
        out_dir: Path,
        sizes: dict[Split, int] | None = None,
        seed: int = 0,
        overwrite: bool = False,
    ) -> dict[Split, Path]:
        """Write train/valid/test.jsonl; refuses to overwrite unless told (data is precious)."""
        sizes = {**DEFAULT_SIZES, **(sizes or {})}
        out_dir = Path(out_dir)
        paths: dict[Split, Path] = {s: out_dir / f"{s}.jsonl" for s in sizes}
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"refusing to overwrite {', '.join(existing)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for split, path in paths.items():
            rows = [self.record(e) for e in self.generate(split, sizes[split], seed)]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            tmp.replace(path)
        return paths


TASKS: dict[str, Task] = {
    t.name: t for t in (Task(m.SPEC) for m in (telecom, retail, manufacturing))
}
for _task in TASKS.values():
    _check_spec(_task.spec)


def task_names() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r} (known: {', '.join(TASKS)})") from None
