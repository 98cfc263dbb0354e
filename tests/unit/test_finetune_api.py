"""The files and fine-tuning endpoints through the official `openai` client, over the real
app with fake engines (no training: the worker's side is driven through `JobState` and the
worker's validation, which needs only the tiny model's tokenizer)."""

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
from finetune.names import fine_tuned_model_name, store_name_for
from finetune.state import JobState
from finetune.worker import MAX_ATTEMPTS, Worker
from gateway.testing import fake_app
from tests.integration.conftest import make_peft_adapter
from tunegate.config import load_settings

BASE = "tiny-random-llama"


def _example(label: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "Route the ticket."},
            {"role": "user", "content": f"My {label} is broken"},
            {"role": "assistant", "content": label},
        ]
    }


GOOD = "".join(json.dumps(_example(f"label{i}")) + "\n" for i in range(12)).encode()
BAD = (
    json.dumps(_example("ok"))
    + "\n{not json\n"
    + json.dumps({"messages": [{"role": "robot", "content": "x"}]})
    + "\n"
).encode()


@pytest.fixture
def client(home: Path) -> Iterator[tuple[openai.OpenAI, TestClient[Any]]]:
    settings = load_settings()
    settings.default_base = BASE
    settings.gateway.store_poll_s = 0.02
    store = Store(home / "store", BaseRegistry(home / "models"))
    app, _ = fake_app(settings, store=store)
    with TestClient(app) as http:
        yield openai.OpenAI(base_url=f"{http.base_url}/v1", api_key="x", http_client=http), http  # type: ignore[arg-type]
    store.close()


def test_files_upload_list_retrieve_content_delete(
    client: tuple[openai.OpenAI, TestClient[Any]],
) -> None:
    api, _ = client
    uploaded = api.files.create(file=("train.jsonl", io.BytesIO(GOOD)), purpose="fine-tune")
    assert uploaded.object == "file" and uploaded.bytes == len(GOOD)
    assert uploaded.filename == "train.jsonl" and uploaded.purpose == "fine-tune"
    assert api.files.retrieve(uploaded.id).id == uploaded.id
    assert [f.id for f in api.files.list()] == [uploaded.id]
    assert api.files.content(uploaded.id).read() == GOOD
    deleted = api.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError) as err:
        api.files.retrieve(uploaded.id)
    assert err.value.body["param"] == "file_id"  # type: ignore[index]


def test_upload_over_the_limit_is_refused_and_nothing_is_kept(
    client: tuple[openai.OpenAI, TestClient[Any]], home: Path
) -> None:
    api, http = client
    http.app.state.finetune.config.max_file_bytes = 100
    with pytest.raises(openai.APIStatusError) as err:
        api.files.create(file=("big.jsonl", io.BytesIO(GOOD)), purpose="fine-tune")
    assert err.value.status_code == 413
    assert "100 bytes" in err.value.body["message"]  # type: ignore[index]
    assert list(api.files.list()) == []
    assert [p.name for p in (home / "files").iterdir()] == []


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"model": "gpt-4o-mini"}, "model"),
        ({"training_file": "file-missing"}, "training_file"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        (
            {
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"batch_size": 0}},
                }
            },
            "method.supervised.hyperparameters.batch_size",
        ),
        ({"method": {"type": "dpo"}}, "method.type"),
        ({"suffix": "has:colon"}, "suffix"),
    ],
)
def test_bad_job_requests_are_400_naming_the_param(
    client: tuple[openai.OpenAI, TestClient[Any]], kwargs: dict[str, Any], param: str
) -> None:
    api, _ = client
    good = api.files.create(file=("t.jsonl", io.BytesIO(GOOD)), purpose="fine-tune")
    args: dict[str, Any] = {"model": BASE, "training_file": good.id, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        api.fine_tuning.jobs.create(**args)
    assert err.value.body["param"] == param  # type: ignore[index]
    assert list(api.fine_tuning.jobs.list()) == []


def test_job_lifecycle_validation_pagination_and_cancel(
    client: tuple[openai.OpenAI, TestClient[Any]], home: Path
) -> None:
    api, _ = client
    good = api.files.create(file=("good.jsonl", io.BytesIO(GOOD)), purpose="fine-tune")
    bad = api.files.create(file=("bad.jsonl", io.BytesIO(BAD)), purpose="fine-tune")
    job = api.fine_tuning.jobs.create(
        model=BASE,
        training_file=good.id,
        suffix="demo",
        hyperparameters={"n_epochs": 2, "learning_rate_multiplier": "auto"},
        metadata={"team": "ops"},
    )
    assert job.status == "validating_files" and job.object == "fine_tuning.job"
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 8
    assert job.method is not None and job.method.type == "supervised"
    failing = api.fine_tuning.jobs.create(model=BASE, training_file=bad.id)

    worker = Worker(load_settings())
    for pending in worker.state.pending_validation():
        worker.validate(pending)

    assert api.fine_tuning.jobs.retrieve(job.id).status == "queued"
    failed = api.fine_tuning.jobs.retrieve(failing.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.param == "training_file"
    assert "line 2: invalid_json" in failed.error.message
    assert "line 3: unrecognized_role" in failed.error.message
    assert failed.finished_at is not None

    # Newest first, paginated by `after`.
    first = api.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in first.data] == [failing.id] and first.has_more
    assert [j.id for j in api.fine_tuning.jobs.list(limit=1, after=failing.id).data] == [job.id]
    assert [j.id for j in api.fine_tuning.jobs.list(metadata={"team": "ops"})] == [job.id]

    events = [e.message for e in api.fine_tuning.jobs.list_events(job.id)]
    assert events[0] == "Files validated, moving job to queued state"
    assert events[-1].startswith("Created fine-tuning job")

    cancelled = api.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert worker.state.claim(worker.id) is None  # a cancelled job is never run
    with pytest.raises(openai.BadRequestError):
        api.fine_tuning.jobs.cancel(job.id)
    assert list(api.fine_tuning.jobs.checkpoints.list(job.id)) == []


def test_keys_see_only_their_own_files_and_jobs(home: Path) -> None:
    state = JobState(home)
    mine = state.add_file(io.BytesIO(GOOD), "a.jsonl", "fine-tune", "key-a", 10**6)
    state.add_file(io.BytesIO(GOOD), "b.jsonl", "fine-tune", "key-b", 10**6)
    assert [f.id for f in state.list_files("key-a").data] == [mine.id]
    assert len(state.list_files(None).data) == 2  # no key (auth off): everything
    with pytest.raises(LookupError):
        state.get_file(mine.id, "key-b")


def test_claim_is_exclusive_and_a_dead_workers_job_is_resumed_then_failed(home: Path) -> None:
    state = JobState(home)
    f = state.add_file(io.BytesIO(GOOD), "a.jsonl", "fine-tune", None, 10**6)
    job = state.create_job(
        owner=None,
        model=BASE,
        training_file=f.id,
        validation_file=None,
        suffix=None,
        seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": {}}},
        metadata=None,
    )
    assert state.transition(job.id, "validating_files", "queued")
    dead = "no-such-host-really:1"
    assert state.claim("localhost-that-is-gone:999999") is not None
    assert state.claim(dead) is None  # already claimed

    worker = Worker(load_settings())
    for attempt in range(1, MAX_ATTEMPTS + 1):
        # The claiming worker died (its pid does not exist on this host).
        state.set_columns(job.id, worker=f"{worker.id.rpartition(':')[0]}:999999")
        worker.recover()
        if attempt < MAX_ATTEMPTS:
            assert state.status(job.id) == "queued"
            assert state.claim("x:1") is not None
    failed = state.get_job(job.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error["code"] == "worker_died"


def test_ft_names_route_only_to_the_artifact_that_carries_them(
    client: tuple[openai.OpenAI, TestClient[Any]], home: Path, tiny_model: Any, tmp_path: Path
) -> None:
    api, http = client
    job_id = "ftjob-" + "ab" * 12
    name = fine_tuned_model_name(BASE, "tunegate", "demo", job_id)
    store = Store(home / "store", BaseRegistry(home / "models"))
    adapter = make_peft_adapter(tiny_model, tmp_path / "a", seed=1)
    store_name = store_name_for(name)
    assert store_name is not None
    store.publish(adapter, store_name, card={"fine_tuned_model": name})
    generation = store.generation()
    for _ in range(500):
        if http.get("/health").json()["store_generation"] == generation:
            break
    reply = api.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    assert (reply.choices[0].message.content or "").startswith(f"{store_name}@1")
    assert name in [m.id for m in api.models.list()]
    forged = name.replace(":demo:", ":other:")
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model=forged, messages=[{"role": "user", "content": "hi"}])
    store.close()
