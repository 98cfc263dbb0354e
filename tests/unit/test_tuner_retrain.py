"""`tunegate retrain` without training: the real store, real data files, real captures and
feedback rows, and a fake at the one seam that trains and evaluates (`tuner.retrain.Fit`).

What is checked: the dataset (original + feedback, validated together, held-out questions
left out), the decision (no metric worse than the tolerance), what is published (a new
version with alias `canary`, or nothing), and bad input refused before anything is trained.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tuner.retrain as retrain_module
from adapters_store import BaseRegistry, Store
from adapters_store.bases import BaseModel
from adapters_store.errors import UnknownReferenceError
from adapters_store.testing import write_lora
from gateway.capture import CaptureStore
from gateway.capture.testing import sample_capture
from gateway.feedback import FeedbackStore
from tunegate.cli import main
from tuner.backends import ModelSpec
from tuner.data import dataset_sha256
from tuner.evaluate import EvalResult, load_cases
from tuner.recipe import Recipe
from tuner.retrain import (
    CANARY_ALIAS,
    FeedbackExample,
    Fitted,
    RetrainError,
    assemble,
    decide,
    retrain,
)
from tuner.train import prepare_data

TASK = "telecom-routing"
SYSTEM = "Route the ticket."


def _messages(question: str, answer: str | None = None) -> list[dict[str, str]]:
    out = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return out + ([{"role": "assistant", "content": answer}] if answer else [])


def _evaluation(current: dict[str, float], new: dict[str, float]) -> EvalResult:
    return EvalResult(
        data="test.jsonl", n=4, backend="fake", conditions={"current": current, "tuned": new}
    )


class FakeFit:
    """Writes an adapter as training would and reports the scores it was given."""

    def __init__(
        self, tmp: Path, tiny: BaseModel, current: dict[str, float], new: dict[str, float]
    ) -> None:
        self.tmp, self.tiny = tmp, tiny
        self.scores = (current, new)
        self.calls: list[tuple[Recipe, ModelSpec]] = []

    def __call__(self, recipe: Recipe, current: ModelSpec, echo: Callable[[str], None]) -> Fitted:
        self.calls.append((recipe, current))
        run_dir = self.tmp / f"run-{len(self.calls)}"
        adapter = write_lora(run_dir / "adapter", self.tiny, r=4)
        card = {"method": "lora", "recipe": recipe.to_dict(), "task": recipe.task}
        return Fitted(adapter, run_dir, _evaluation(*self.scores), card)


@pytest.fixture
def store(home: Path) -> Store:
    store = Store(home / "store", BaseRegistry(home / "models"))
    yield store  # type: ignore[misc]
    store.close()


@pytest.fixture
def recipe(home: Path, tiny_model: BaseModel) -> Recipe:
    return Recipe(name="telecom", task=TASK, base=tiny_model.id, n_train=12, n_valid=2, n_test=4)


def _publish_tuned(store: Store, home: Path, tiny: BaseModel, recipe: Recipe, tmp: Path) -> str:
    """Version 1 as `tunegate tune` publishes it: recipe and dataset checksum on its card."""
    data = prepare_data(recipe, home, echo=lambda _: None)
    card = {
        "method": "lora",
        "recipe": recipe.to_dict(),
        "dataset_sha256": dataset_sha256(data.train),
    }
    return store.publish(write_lora(tmp / "v1", tiny, r=4), "telecom", card=card).ref


def _test_file(home: Path) -> Path:
    return next((home / "data" / TASK).glob("*/test.jsonl"))


SAME = {"accuracy": 0.5, "macro_f1": 0.4}


def test_not_worse_publishes_a_canary_trained_on_original_plus_feedback(
    store: Store, home: Path, tiny_model: BaseModel, recipe: Recipe, tmp_path: Path
) -> None:
    _publish_tuned(store, home, tiny_model, recipe, tmp_path)
    store.set_alias("telecom@1", "prod")
    held_out = load_cases(_test_file(home))[0].user_text
    feedback = [
        FeedbackExample("req-1", _messages("my roaming does not work in Spain", "roaming")),
        FeedbackExample("req-2", _messages(held_out, "billing_dispute")),  # a test question
    ]
    fit = FakeFit(tmp_path, tiny_model, SAME, {"accuracy": 0.75, "macro_f1": 0.4})
    outcome = retrain(store, "telecom@prod", home, fit, feedback=feedback, echo=lambda _: None)

    assert (outcome.published, outcome.alias) == ("telecom@2", CANARY_ALIAS)
    assert outcome.decision.delta == {"accuracy": 0.25, "macro_f1": 0.0}
    [(trained, current)] = fit.calls
    assert current.adapter == store.resolve("telecom@1").path  # compared with the current
    rows = [json.loads(x) for x in Path(trained.train_file).read_text().splitlines()]
    assert len(rows) == 12 + 1 and rows[-1]["messages"][-1]["content"] == "roaming"
    assert trained.test_file == str(_test_file(home)) and trained.valid_file is not None
    assert outcome.assembled.dropped_in_test == ["req-2"]

    new = store.resolve("telecom@canary")
    assert new.ref == "telecom@2" and new.card["parent"] == "telecom@1"
    assert new.card["retrain"]["feedback_request_ids"] == ["req-1"]
    assert store.resolve("telecom@prod").ref == "telecom@1"  # prod is the rollout's business
    assert [(e.action, e.subject) for e in store.audit("telecom")][-2:] == [
        ("publish", "telecom@2"),
        ("alias", "telecom@canary"),
    ]
    report = outcome.to_dict()
    assert report["decision"] == "published" and report["data"]["feedback_examples"] == 1

    # The new version's card names its combined data: retraining it again finds that file.
    again = retrain(store, "telecom@canary", home, fit, echo=lambda _: None)
    assert again.published == "telecom@3" and again.assembled.original == 13


def test_a_worse_version_is_not_published(
    store: Store, home: Path, tiny_model: BaseModel, recipe: Recipe, tmp_path: Path
) -> None:
    _publish_tuned(store, home, tiny_model, recipe, tmp_path)
    fit = FakeFit(tmp_path, tiny_model, SAME, {"accuracy": 0.5, "macro_f1": 0.35})
    outcome = retrain(store, "telecom", home, fit, echo=lambda _: None)
    assert outcome.published is None and not outcome.decision.not_worse
    assert outcome.decision.delta["macro_f1"] == -0.05
    assert outcome.to_dict()["decision"] == "worse"
    assert [v.ref for v in store.list("telecom")] == ["telecom@1"]
    assert [e.action for e in store.audit("telecom")] == ["publish"]
    # Not worse, but the recipe says publish=false: reported, nothing published.
    fit.scores = (SAME, SAME)
    dry = retrain(store, "telecom", home, fit, overrides=["publish=false"], echo=lambda _: None)
    assert dry.decision.not_worse and dry.published is None
    assert dry.to_dict()["decision"] == "not_published"
    assert [v.ref for v in store.list("telecom")] == ["telecom@1"]
    # The same drop within the tolerance counts as not worse.
    fit.scores = (SAME, {"accuracy": 0.5, "macro_f1": 0.35})
    within = retrain(store, "telecom", home, fit, tolerance=0.05, echo=lambda _: None)
    assert within.published == "telecom@2"


@pytest.mark.parametrize(
    ("current", "new", "tolerance", "not_worse"),
    [
        (SAME, SAME, 0.0, True),
        (SAME, {"accuracy": 0.6, "macro_f1": 0.5}, 0.0, True),
        (SAME, {"accuracy": 0.45, "macro_f1": 0.9}, 0.0, False),  # one metric down is worse
        (SAME, {"accuracy": 0.45, "macro_f1": 0.9}, 0.05, True),
        (SAME, {"accuracy": 0.5, "macro_f1": 0.3}, 0.05, False),
        ({"exact_match": 0.2}, {"exact_match": 0.2}, 0.0, True),  # a free-text task
        ({"exact_match": 0.2}, {"exact_match": 0.1}, 0.0, False),
    ],
)
def test_decision(
    current: dict[str, float], new: dict[str, float], tolerance: float, not_worse: bool
) -> None:
    decision = decide(_evaluation(current, new), tolerance)
    assert decision.not_worse is not_worse
    assert set(decision.delta) == set(current)


def test_decision_needs_both_versions_scored() -> None:
    with pytest.raises(RetrainError, match="cannot compare"):
        decide(None)
    lonely = EvalResult(data="t", n=1, backend="fake", conditions={"tuned": SAME})
    with pytest.raises(RetrainError, match="'current'"):
        decide(lonely)


def test_invalid_lines_are_named_by_where_they_came_from(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    rows = [{"messages": _messages(f"question {i}", "billing_dispute")} for i in range(11)]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    good = FeedbackExample("req-ok", _messages("wifi down", "network_outage"))
    blank = FeedbackExample("req-blank", _messages("   ", "roaming"))
    robot = FeedbackExample("req-robot", [{"role": "robot", "content": "x"}, *_messages("a", "b")])
    with pytest.raises(RetrainError) as refused:
        assemble(train, [good, blank, robot])
    message = str(refused.value)
    assert "2 error(s), nothing trained" in message
    assert "feedback on request req-blank: missing_content" in message
    assert "feedback on request req-robot: unrecognized_role" in message
    assert "req-ok" not in message

    train.write_text(train.read_text() + '{"messages": []}\n')
    with pytest.raises(RetrainError, match=rf"{train} line 12: missing_messages_list"):
        assemble(train, [good])
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    combined = assemble(train, [good])
    assert (combined.original, combined.feedback, combined.feedback_request_ids) == (
        11,
        1,
        ["req-ok"],
    )


def _refused(store: Store, home: Path, fit: FakeFit, ref: str, **kwargs: Any) -> str:
    before = [e.action for e in store.audit()]
    with pytest.raises((RetrainError, LookupError)) as refused:
        retrain(store, ref, home, fit, echo=lambda _: None, **kwargs)
    assert fit.calls == [] and [e.action for e in store.audit()] == before
    return str(refused.value)


def test_bad_input_is_refused_before_training(
    store: Store, home: Path, tiny_model: BaseModel, recipe: Recipe, tmp_path: Path
) -> None:
    fit = FakeFit(tmp_path, tiny_model, SAME, SAME)
    with pytest.raises(UnknownReferenceError):
        retrain(store, "nosuch", home, fit, echo=lambda _: None)

    store.publish(write_lora(tmp_path / "by-hand", tiny_model, r=4), "byhand")
    assert "has no recipe on its card" in _refused(store, home, fit, "byhand")

    _publish_tuned(store, home, tiny_model, recipe, tmp_path)
    bad = FeedbackExample("req-bad", _messages("", "roaming"))
    assert "feedback on request req-bad" in _refused(store, home, fit, "telecom", feedback=[bad])
    assert "no corrected feedback" in _refused(store, home, fit, "telecom", feedback=[])
    assert "unknown key 'learning_rate'" in _refused(
        store, home, fit, "telecom", overrides=["learning_rate=1"]
    )
    assert "new version of 'telecom'" in _refused(store, home, fit, "telecom", overrides=["name=x"])
    assert "evaluate=false" in _refused(store, home, fit, "telecom", overrides=["evaluate=false"])
    assert "tolerance" in _refused(store, home, fit, "telecom", tolerance=2.0)

    train = next((home / "data" / TASK).glob("*/train.jsonl"))
    train.write_text(train.read_text() + train.read_text().splitlines()[0] + "\n")
    assert "has changed since it was trained" in _refused(store, home, fit, "telecom")

    gone = Recipe(
        name="gone",
        base=tiny_model.id,
        train_file=str(tmp_path / "gone.jsonl"),
        test_file=str(train),
    )
    store.publish(
        write_lora(tmp_path / "gone", tiny_model, r=4), "gone", card={"recipe": gone.to_dict()}
    )
    message = _refused(store, home, fit, "gone")
    assert "training data of gone@1 is not reachable" in message and "gone.jsonl" in message

    # A demo task's recipe that named its own test file: never regenerated in its place.
    named = tmp_path / "lost" / "test.jsonl"
    lost = Recipe(name="lost", task=TASK, base=tiny_model.id, n_train=12, test_file=str(named))
    store.publish(
        write_lora(tmp_path / "lost-v1", tiny_model, r=4), "lost", card={"recipe": lost.to_dict()}
    )
    assert f"test_file {named} does not exist" in _refused(store, home, fit, "lost")
    assert not named.exists()


def test_cli_reads_corrections_and_reports(
    store: Store,
    home: Path,
    tiny_model: BaseModel,
    recipe: Recipe,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _publish_tuned(store, home, tiny_model, recipe, tmp_path)
    captures = CaptureStore(home / "captures.sqlite3")
    question = [{"role": "user", "content": "cannot call from Italy"}]
    captures.write(
        [
            sample_capture(
                "r1", artifact="telecom@1", request={"messages": question}, system_prompt=SYSTEM
            ),
            sample_capture("r2", artifact="other@1"),
        ]
    )
    captures.close()
    feedback = FeedbackStore(home / "accounting.sqlite3")
    feedback.add("r1", None, -1.0, "roaming")
    feedback.add("r2", None, -1.0, "billing_dispute")

    fits: list[FakeFit] = []

    def fake_pipeline_fit(*args: Any) -> FakeFit:
        fits.append(FakeFit(tmp_path, tiny_model, SAME, SAME))
        return fits[-1]

    monkeypatch.setattr(retrain_module, "pipeline_fit", fake_pipeline_fit)
    assert main(["retrain", "telecom", "--from-feedback", "--json", "max_steps=3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["new"] == "telecom@2" and report["data"]["feedback_request_ids"] == ["r1"]
    assert fits[0].calls[0][0].max_steps == 3

    fits.clear()
    monkeypatch.setattr(
        retrain_module,
        "pipeline_fit",
        lambda *a: (
            fits.append(FakeFit(tmp_path, tiny_model, SAME, {"accuracy": 0.4, "macro_f1": 0.4}))
            or fits[-1]
        ),
    )
    assert main(["retrain", "telecom@1"]) == 3
    out = capsys.readouterr().out
    assert "accuracy: 0.500 -> 0.400 (-0.100)" in out and "nothing published" in out
    assert main(["retrain", "nosuch"]) == 1
    assert "nosuch" in capsys.readouterr().err
