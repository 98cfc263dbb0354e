"""Retraining a published artifact: its own recipe and training data, plus corrected feedback,
trained as a new version, compared with the current version on the held-out test set, and
published under the alias `canary` only when it is not worse.

The steps, each refusing with a clear message before anything is trained or published:
1. `find_source`: the version REF names, the recipe on its card (with `key=value` overrides)
   and its training data, checked against the card's `dataset_sha256`;
2. `assemble`: the original examples plus the feedback examples, validated together like any
   data (a bad feedback example is named by its request id); feedback whose question is in
   the held-out test set is left out, or the comparison would reward memorising it;
3. `retrain`: train with the tune pipeline's machinery, evaluate the new version and the
   current one side by side (`decide`), publish + alias `canary` when not worse.

A worse candidate is NOT published: the store (and the audit trail, and the gateway's list
of models) only ever holds versions that passed; the trained folder stays in its run
directory, so a person can still publish it by hand after reading the report.

`feedback` arrives as plain examples: collecting them is the gateway's business
(`gateway.capture.examples.retraining_examples`), and the tuner never imports the gateway.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from adapters_store.catalog import ArtifactVersion, Store
from tuner.backends import ModelSpec
from tuner.config import TunerConfig
from tuner.data import Problem, dataset_sha256, validate_records
from tuner.evaluate import EvalResult, load_cases
from tuner.pipeline import build_card, evaluate_run, run_spec, version_spec
from tuner.recipe import Recipe, RecipeError, build_recipe, parse_overrides
from tuner.train import DataFiles, TrainingError, ensure_base, prepare_data

__all__ = [
    "CANARY_ALIAS",
    "Assembled",
    "Decision",
    "FeedbackExample",
    "Fitted",
    "RetrainError",
    "RetrainOutcome",
    "Source",
    "assemble",
    "decide",
    "find_source",
    "retrain",
]

CANARY_ALIAS = "canary"
# The condition name the current version gets in the evaluation table (the new one is "tuned").
CURRENT = "current"
Printer = Callable[[str], None]


class RetrainError(ValueError):
    """Retraining cannot start (or cannot decide); nothing was trained or published."""


@dataclass(frozen=True)
class FeedbackExample:
    """A corrected answer made into a training example, and the request it came from."""

    request_id: str
    messages: list[dict[str, Any]]


@dataclass(frozen=True)
class Source:
    """What a new version is trained from: the current version, its recipe and data."""

    current: ArtifactVersion
    recipe: Recipe  # the card's recipe with the overrides applied
    data: DataFiles  # the original train/valid/test files, absolute


@dataclass(frozen=True)
class Assembled:
    """The combined training set: original examples first, then feedback examples."""

    lines: list[str]
    original: int
    feedback: int
    feedback_request_ids: list[str]
    dropped_in_test: list[str]  # feedback request ids whose question is a test question
    warnings: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Decision:
    """New vs current on the held-out set; deltas are new minus current."""

    not_worse: bool
    metrics: tuple[str, ...]
    current: dict[str, float]
    new: dict[str, float]
    delta: dict[str, float]
    tolerance: float


@dataclass(frozen=True)
class Fitted:
    """What a training run hands back for the decision and the publish."""

    output_dir: Path  # the adapter (lora) or model (full) folder
    run_dir: Path
    evaluation: EvalResult | None  # has the "tuned" and the CURRENT condition
    card: dict[str, Any]  # the card `tunegate tune` would publish for this run


class Fit(Protocol):
    """The one seam: train `recipe` and evaluate it beside `current` on its test file."""

    def __call__(self, recipe: Recipe, current: ModelSpec, echo: Printer) -> Fitted: ...


@dataclass(frozen=True)
class RetrainOutcome:
    source: Source
    assembled: Assembled
    train_file: Path
    fitted: Fitted
    decision: Decision
    published: str | None  # `name@version` when published
    alias: str | None  # CANARY_ALIAS when the new version got it

    def to_dict(self) -> dict[str, Any]:
        data = self.source.data
        if self.published:
            verdict = "published"
        elif self.decision.not_worse:
            verdict = "not_published"  # not worse, but the recipe says publish=false
        else:
            verdict = "worse"
        return {
            "ref": self.source.current.ref,
            "current": self.source.current.ref,
            "new": self.published,
            "alias": self.alias,
            "decision": verdict,
            "not_worse": self.decision.not_worse,
            "tolerance": self.decision.tolerance,
            "metrics": {"current": self.decision.current, "new": self.decision.new},
            "delta": self.decision.delta,
            "data": {
                "train_file": str(self.train_file),
                "dataset_sha256": self.assembled.sha256,
                "original_examples": self.assembled.original,
                "feedback_examples": self.assembled.feedback,
                "feedback_request_ids": self.assembled.feedback_request_ids,
                "feedback_in_test_set": self.assembled.dropped_in_test,
                "test_file": str(data.test) if data.test else None,
            },
            "run_dir": str(self.fitted.run_dir),
            "output_dir": str(self.fitted.output_dir),
        }


# -- 1. the source --------------------------------------------------------------------------
def find_source(
    store: Store, ref: str, home: Path, overrides: Sequence[str] = (), echo: Printer = print
) -> Source:
    """The version `ref` names, its recipe (+ overrides) and its original data files."""
    current = store.resolve(ref)  # an unknown reference raises the store's LookupError
    card = current.card or {}
    recorded = card.get("recipe")
    if not isinstance(recorded, dict) or not recorded:
        raise RetrainError(
            f"{current.ref} has no recipe on its card (published by hand, not by "
            "`tunegate tune`?): nothing to retrain it with"
        )
    try:
        recipe = build_recipe(recorded, f"{current.ref}'s recipe")
        changes = parse_overrides(overrides)
        if changes.get("name", recipe.name) != current.name:
            raise RetrainError(f"name: retraining publishes a new version of {current.name!r}")
        recipe = build_recipe({**recipe.to_dict(), **changes, "name": current.name}, "override")
    except RecipeError as exc:
        raise RetrainError(str(exc)) from None
    if recipe.method not in ("lora", "full"):
        raise RetrainError(
            f"{current.ref} was made by method {recipe.method!r}: retrain handles lora and "
            "full recipes; run `tunegate distill` again for a student"
        )
    if not recipe.evaluate:
        raise RetrainError("evaluate=false: the new version must be compared with the current")
    data = _original_data(current, recipe, home, set(changes), echo)
    if data.test is None or not data.test.is_file():
        raise RetrainError(
            f"{current.ref}: no held-out test file to compare the versions on "
            f"({data.test or 'none in the recipe'}); pass test_file=PATH"
        )
    return Source(current, recipe, data)


def _original_data(
    current: ArtifactVersion, recipe: Recipe, home: Path, overridden: set[str], echo: Printer
) -> DataFiles:
    """The recipe's files (a demo task's are regenerated when absent: the generator is
    deterministic and the folder is named by its inputs); the training file must still hash
    to the card's `dataset_sha256` unless the caller named another one."""
    train_overridden = "train_file" in overridden
    recorded_train = _run_train_file(current)
    if recorded_train is not None and not train_overridden and recipe.train_file is not None:
        # A relative train_file was relative to where `tune` ran; the run recorded it whole.
        recipe = dataclasses.replace(recipe, train_file=str(recorded_train))
    for key in ("train_file", "valid_file", "test_file"):
        named = getattr(recipe, key)
        # A file the recipe named is never regenerated in its place: it was the user's data.
        if named is not None and key not in overridden and not Path(named).expanduser().exists():
            raise RetrainError(
                f"the training data of {current.ref} is not reachable: {key} {named} does "
                f"not exist; pass {key}=PATH to retrain from a copy"
            )
    try:
        data = prepare_data(recipe, home, echo)
    except TrainingError as exc:
        raise RetrainError(
            f"the training data of {current.ref} is not reachable: {exc}; pass "
            "train_file=PATH (and valid_file/test_file) to retrain from a copy"
        ) from None
    expected = (current.card or {}).get("dataset_sha256")
    if not train_overridden and expected and dataset_sha256(data.train) != expected:
        raise RetrainError(
            f"the training data of {current.ref} has changed since it was trained: "
            f"{data.train} no longer hashes to the card's dataset_sha256 {expected[:12]}...; "
            "pass train_file=PATH to retrain from other data on purpose"
        )
    return data


def _run_train_file(current: ArtifactVersion) -> Path | None:
    run_dir = ((current.card or {}).get("training") or {}).get("run_dir")
    run_json = Path(run_dir) / "run.json" if isinstance(run_dir, str) else None
    if run_json is None or not run_json.is_file():
        return None
    try:
        recorded = json.loads(run_json.read_text()).get("train_file")
    except (OSError, ValueError):
        return None
    return Path(recorded) if isinstance(recorded, str) else None


# -- 2. the dataset -------------------------------------------------------------------------
def assemble(
    train_file: Path,
    feedback: Sequence[FeedbackExample],
    test_file: Path | None = None,
    tokenizer: Any | None = None,
    max_length: int | None = None,
) -> Assembled:
    """Original examples + feedback examples, validated as one file; an error names the
    original line or the feedback's request id."""
    original = [line for line in train_file.read_text(encoding="utf-8").splitlines() if line]
    held_out = _questions(test_file) if test_file is not None else set()
    kept: list[FeedbackExample] = []
    dropped: list[str] = []
    for example in feedback:
        if _question(example.messages) in held_out:
            dropped.append(example.request_id)
        else:
            kept.append(example)
    added = [json.dumps({"messages": e.messages}, ensure_ascii=False) for e in kept]
    lines = original + added
    report = validate_records(io.StringIO("".join(x + "\n" for x in lines)), tokenizer, max_length)

    def where(problem: Problem) -> str:
        if problem.line is None:
            return f"{problem.category}: {problem.message}"
        if problem.line <= len(original):
            return f"{train_file} line {problem.line}: {problem.category}: {problem.message}"
        request_id = kept[problem.line - len(original) - 1].request_id
        return f"feedback on request {request_id}: {problem.category}: {problem.message}"

    if report.errors:
        shown = "\n".join(f"  {where(p)}" for p in report.errors[:20])
        more = len(report.errors) - 20
        raise RetrainError(
            f"the combined training data has {len(report.errors)} error(s), nothing trained:\n"
            + shown
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    return Assembled(
        lines=lines,
        original=len(original),
        feedback=len(kept),
        feedback_request_ids=[e.request_id for e in kept],
        dropped_in_test=dropped,
        warnings=[where(p) for p in report.warnings],
    )


def _question(messages: Sequence[Mapping[str, Any]]) -> str:
    users = [m.get("content") for m in messages if m.get("role") == "user"]
    return str(users[-1]).strip() if users else ""


def _questions(test_file: Path) -> set[str]:
    return {case.user_text.strip() for case in load_cases(test_file)}


def _write_dataset(assembled: Assembled, folder: Path) -> Path:
    """Named by its content, written all or nothing: the new card's recipe points here."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{assembled.sha256[:16]}.jsonl"
    if path.is_file() and dataset_sha256(path) == assembled.sha256:
        return path
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(assembled.text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- 3. the decision ------------------------------------------------------------------------
def decide(evaluation: EvalResult | None, tolerance: float = 0.0) -> Decision:
    """Not worse = no metric drops by more than `tolerance` (absolute): accuracy and macro-F1
    for label tasks, exact match otherwise."""
    if evaluation is None:
        raise RetrainError("the run was not evaluated: cannot compare it with the current version")
    rows = evaluation.conditions
    if "tuned" not in rows or CURRENT not in rows:
        raise RetrainError(f"the evaluation lacks the 'tuned' or {CURRENT!r} condition")
    metrics = ("accuracy", "macro_f1") if "macro_f1" in rows["tuned"] else ("exact_match",)
    current = {m: float(rows[CURRENT][m]) for m in metrics}
    new = {m: float(rows["tuned"][m]) for m in metrics}
    delta = {m: round(new[m] - current[m], 6) for m in metrics}
    # A hair of slack so that equal scores computed in another order still count as equal.
    not_worse = all(delta[m] >= -tolerance - 1e-9 for m in metrics)
    return Decision(not_worse, metrics, current, new, delta, tolerance)


# -- the whole loop -------------------------------------------------------------------------
def pipeline_fit(
    home: Path, config: TunerConfig, backend: str | None = None
) -> Fit:  # pragma: no cover - trains a model: the e2e test runs it
    """The real `Fit`: the tune pipeline's train, evaluate_run (with the current version
    as one more condition) and build_card."""
    from tuner.hardware import configure_threads
    from tuner.train import train

    def fit(recipe: Recipe, current: ModelSpec, echo: Printer) -> Fitted:
        configure_threads(config.threads, echo)
        run = train(recipe, home, echo=echo)
        # vLLM keys a loaded LoRA by its int id: the new adapter must not reuse the current's.
        new = dataclasses.replace(run_spec(run), uid=current.uid + 1)
        evaluation = evaluate_run(run, new, config, backend, echo, {CURRENT: current})
        return Fitted(run.output_dir, run.run_dir, evaluation, build_card(run, evaluation))

    return fit


def retrain(
    store: Store,
    ref: str,
    home: Path,
    fit: Fit,
    *,
    overrides: Sequence[str] = (),
    feedback: Sequence[FeedbackExample] | None = None,
    tolerance: float = 0.0,
    echo: Printer = print,
) -> RetrainOutcome:
    """Retrain `ref` (see the module doc); `feedback` None: no feedback asked for, [] : asked
    for but none found (refused: the caller wanted the corrections in)."""
    if not 0 <= tolerance <= 1:
        raise RetrainError(f"tolerance must be in [0, 1] (a share of accuracy), got {tolerance}")
    source = find_source(store, ref, home, overrides, echo)
    if feedback is not None and not feedback:
        raise RetrainError(
            f"no corrected feedback for {source.current.name} (captured requests answered by "
            "it with a `correction` posted to /v1/feedback); nothing retrained"
        )
    recipe = source.recipe
    base = ensure_base(home / "models", recipe.base)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    context = int(base.hf_config().get("max_position_embeddings") or recipe.max_length)
    assembled = assemble(
        source.data.train,
        feedback or [],
        source.data.test,
        tokenizer,
        min(recipe.max_length, context),
    )
    for warning in assembled.warnings:
        echo(f"warning: {warning}")
    if assembled.dropped_in_test:
        echo(
            f"left out {len(assembled.dropped_in_test)} feedback example(s) whose question is "
            "in the held-out test set"
        )
    train_file = _write_dataset(assembled, home / "data" / "retrain" / source.current.name)
    echo(
        f"training data: {assembled.original} original + {assembled.feedback} feedback "
        f"example(s): {train_file}"
    )
    data = source.data
    new_recipe = dataclasses.replace(
        recipe,
        train_file=str(train_file),
        valid_file=str(data.valid) if data.valid else None,
        test_file=str(data.test),
    )
    fitted = fit(new_recipe, version_spec(source.current, base.path), echo)
    decision = decide(fitted.evaluation, tolerance)
    published = alias = None
    if decision.not_worse and recipe.publish:
        card = {
            **fitted.card,
            "parent": source.current.ref,
            "retrain": {
                "from": source.current.ref,
                "original_examples": assembled.original,
                "feedback_examples": assembled.feedback,
                "feedback_request_ids": assembled.feedback_request_ids,
                "delta": decision.delta,
            },
        }
        version = store.publish(
            fitted.output_dir,
            source.current.name,
            kind=source.current.kind,
            base=source.current.base,
            card=card,
        )
        store.set_alias(version.ref, CANARY_ALIAS)
        published, alias = version.ref, CANARY_ALIAS
    return RetrainOutcome(source, assembled, train_file, fitted, decision, published, alias)
