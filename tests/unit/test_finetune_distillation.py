"""Distillation jobs (`method.type: distillation`): the method object's validation through
the official `openai` client over the real app with fake engines, and the training file the
worker builds from stored completions, which tests write straight into the capture store
(the writer seam) instead of serving chat requests."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from litestar.testing import TestClient

from adapters_store import BaseRegistry, Store
from finetune.distillation import NoStoredCompletionsError, build_training_file
from finetune.state import JobState
from finetune.worker import Worker, _metrics_csv
from gateway.capture import CaptureStore, captures_path
from gateway.capture.testing import sample_capture
from gateway.testing import fake_app
from tunegate.config import load_settings

BASE = "tiny-random-llama"
TEACHER = "telecom@prod"  # sample_capture's requested model (answered by telecom@1)


def _conversation(question: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


GOOD = "".join(json.dumps(_conversation(f"q{i}", f"a{i}")) + "\n" for i in range(4)).encode()


@pytest.fixture
def client(home: Path) -> Iterator[tuple[openai.OpenAI, TestClient[Any]]]:
    settings = load_settings()
    settings.default_base = BASE
    store = Store(home / "store", BaseRegistry(home / "models"))
    app, _ = fake_app(settings, store=store)
    with TestClient(app) as http:
        yield openai.OpenAI(base_url=f"{http.base_url}/v1", api_key="x", http_client=http), http  # type: ignore[arg-type]
    store.close()


@pytest.fixture
def api(client: tuple[openai.OpenAI, TestClient[Any]], home: Path) -> openai.OpenAI:
    """The client, with the stored completions of `_store_captures` in place."""
    _store_captures(home)
    return client[0]


def _store_captures(home: Path) -> None:
    """Two matching completions (one from key-a), and one each that must be left out."""
    store = CaptureStore(captures_path(load_settings()))
    q = {"messages": [{"role": "user", "content": "my bill is wrong"}]}
    store.write(
        [
            sample_capture("r1", created_at=1000.0, request=q, response="billing"),
            sample_capture(
                "r2",
                created_at=1001.0,
                key_id="key-a",
                request={
                    "messages": [
                        {"role": "developer", "content": "Route it."},
                        {"role": "user", "content": "no signal"},
                    ]
                },
                response="outage",
                metadata={"task": "routing", "run": "7"},
            ),
            sample_capture("other-task", metadata={"task": "tagging"}),
            sample_capture("other-model", requested_model="retail@1", artifact="retail@1"),
            sample_capture("not-stored", stored=False),
            sample_capture("empty-answer", response="  "),
        ]
    )
    store.close()


def _validate_pending() -> None:
    """What the worker does first on each poll (no training here)."""
    worker = Worker(load_settings())
    for pending in worker.state.pending_validation():
        worker.validate(pending)


def _distill(**settings: Any) -> dict[str, Any]:
    return {"type": "distillation", "distillation": {"teacher": TEACHER, **settings}}


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"method": {"type": "distillation"}}, "method.distillation"),
        ({"method": _distill(teacher="Not A Ref!")}, "method.distillation.teacher"),
        ({"method": _distill(teacher="")}, "method.distillation.teacher"),
        ({"method": {"type": "distillation", "distillation": {}}}, "method.distillation.teacher"),
        ({"method": _distill(temperature=2.0)}, "method.distillation.temperature"),
        (
            {"method": _distill(metadata={f"k{i}": "v" for i in range(17)})},
            "method.distillation.metadata",
        ),
        (
            {"method": _distill(hyperparameters={"n_epochs": 0})},
            "method.distillation.hyperparameters.n_epochs",
        ),
        (
            {"method": _distill(hyperparameters={"n_epochs": 2}), "hyperparameters": {}},
            "hyperparameters",
        ),
        ({"method": {**_distill(), "supervised": {}}}, "method.supervised"),
        (
            {"method": {"type": "supervised", "distillation": {"teacher": TEACHER}}},
            "method.distillation",
        ),
        ({"method": {"type": "reinforcement"}}, "method.type"),
        ({"method": {"type": "unknown"}}, "method.type"),
        # Only a distillation may leave the training file out.
        ({"method": {"type": "supervised"}}, "training_file"),
        ({}, "training_file"),
    ],
)
def test_bad_method_objects_are_400_naming_the_param(
    client: tuple[openai.OpenAI, TestClient[Any]], kwargs: dict[str, Any], param: str
) -> None:
    api, _ = client
    with pytest.raises(openai.BadRequestError) as err:
        api.fine_tuning.jobs.create(model=BASE, training_file=openai.omit, **kwargs)
    body = err.value.body
    assert isinstance(body, dict) and body["message"]
    assert body["param"] == param
    assert list(api.fine_tuning.jobs.list()) == []


def test_a_distillation_job_trains_on_a_file_built_from_the_teachers_stored_completions(
    api: openai.OpenAI,
) -> None:
    # The openai client's `method` type lists supervised/dpo/reinforcement only; at run time
    # it sends any dict (extra_body={"method": ...} works as well).
    job = api.fine_tuning.jobs.create(
        model=BASE,
        training_file=openai.omit,  # type: ignore[arg-type]
        method=_distill(metadata={"task": "routing"}, hyperparameters={"n_epochs": 2}),  # type: ignore[arg-type,typeddict-item]
        suffix="distilled",
    )
    assert job.status == "validating_files" and job.training_file == ""
    assert job.method is not None and job.method.type == "distillation"  # type: ignore[comparison-overlap]
    assert job.hyperparameters.n_epochs == 2
    shown = job.method.model_dump()["distillation"]  # type: ignore[union-attr]
    assert shown["teacher"] == TEACHER and shown["metadata"] == {"task": "routing"}

    _validate_pending()

    done = api.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "queued", done.error
    built = api.files.retrieve(done.training_file)
    assert built.purpose == "fine-tune" and built.filename == f"distillation-{job.id}.jsonl"
    assert built.id in [f.id for f in api.files.list(purpose="fine-tune")]
    lines = [json.loads(x) for x in api.files.content(built.id).text.splitlines()]
    # Oldest first; developer read as system; the stored answer as the assistant turn.
    assert lines == [
        _conversation("my bill is wrong", "billing"),
        {
            "messages": [
                {"role": "system", "content": "Route it."},
                {"role": "user", "content": "no signal"},
                {"role": "assistant", "content": "outage"},
            ]
        },
    ]
    events = [e.message for e in api.fine_tuning.jobs.list_events(job.id)]
    assert any(
        m.startswith(f"Built training file {built.id} from 2 stored completion(s)")
        and "1 skipped: empty answer" in m
        for m in events
    )
    assert events[0] == "Files validated, moving job to queued state"


def test_a_distillation_job_without_matching_completions_fails_in_validation(
    api: openai.OpenAI,
) -> None:
    job = api.fine_tuning.jobs.create(
        model=BASE,
        training_file=openai.omit,  # type: ignore[arg-type]
        extra_body={"method": _distill(metadata={"task": "nothing-like-this"})},
    )
    _validate_pending()
    failed = api.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "no_stored_completions"
    assert failed.error.param == "method.distillation"
    assert "teacher 'telecom@prod' with metadata task=nothing-like-this" in failed.error.message
    assert failed.training_file == "" and list(api.files.list()) == []


def test_a_given_training_file_is_used_as_it_is(
    api: openai.OpenAI,
) -> None:
    upload = api.files.create(file=("mine.jsonl", io.BytesIO(GOOD)), purpose="fine-tune")
    job = api.fine_tuning.jobs.create(
        model=BASE, training_file=upload.id, extra_body={"method": _distill()}
    )
    _validate_pending()
    done = api.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "queued" and done.training_file == upload.id
    assert [f.id for f in api.files.list()] == [upload.id]


def test_a_keys_job_reads_only_that_keys_stored_completions(home: Path) -> None:
    settings = load_settings()
    _store_captures(home)
    state = JobState(home)

    def job(owner: str | None) -> Any:
        method = _distill(metadata={"task": "routing"}, hyperparameters={})
        return state.create_job(
            owner=owner,
            model=BASE,
            training_file="",
            validation_file=None,
            suffix=None,
            seed=1,
            method=method,
            metadata=None,
        )

    mine = job("key-a")
    row, summary = build_training_file(settings, state, mine)
    assert row.owner == "key-a" and "sent with API key 'key-a'" in summary
    text = state.file_path(row.id).read_text()
    assert [json.loads(x)["messages"][-1]["content"] for x in text.splitlines()] == ["outage"]
    assert state.get_job(mine.id).training_file == row.id
    with pytest.raises(NoStoredCompletionsError, match="key-b"):
        build_training_file(settings, state, job("key-b"))


def test_the_metrics_csv_has_token_accuracy_columns(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 1, "loss": 2.5, "mean_token_accuracy": 0.25, "learning_rate": 1e-3},
        {"step": 1, "eval_loss": 2.0, "eval_mean_token_accuracy": 0.5},
        {"step": 1, "train_runtime": 3.0},  # the run's summary: not a step row
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = _metrics_csv(metrics).decode().splitlines()
    assert lines == [
        "step,train_loss,valid_loss,train_mean_token_accuracy,valid_mean_token_accuracy,"
        "learning_rate,epoch,elapsed_s",
        "1,2.5,,0.25,,0.001,,",
        "1,,2.0,,0.5,,,",
    ]
