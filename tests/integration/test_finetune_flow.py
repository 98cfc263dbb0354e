"""OpenAI's fine-tuning flow against the integration tests' real `tunegate serve` (which
runs `tunegate worker`, checkpointing every 10 steps by default), on the tiny model, driven
only through the official `openai` client: upload, create a job, follow its events to
`succeeded` (with loss and token accuracy), chat with `fine_tuned_model`, list checkpoints;
a `distillation` job trained on a teacher's stored completions; a bad file failing validation
with line numbers; a cancel mid-run; and a worker killed mid-job that is restarted, resumes
the job it was running and then runs the job queued behind it."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from finetune.state import JobState
from tests.integration.conftest import TINY, RunningGateway

pytestmark = [pytest.mark.engine, pytest.mark.slow]

LABELS = ["billing", "outage", "roaming", "upgrade"]
SYSTEM = "Route the telecom ticket to one team."


def _jsonl(n: int) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Ticket {i}: a problem with my {LABELS[i % 4]}"},
                {"role": "assistant", "content": LABELS[i % 4]},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


BAD = (
    _jsonl(3)
    + b'{"messages": [{"role": "user", "content": "no answer"}]}\n'
    + b"this is not json\n"
)


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key="x", max_retries=0, timeout=60)


def _until(what: str, gateway: RunningGateway, ok: Callable[[], Any], timeout_s: float = 180):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = ok()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{gateway.log_tail()}")


def _upload(client: openai.OpenAI, data: bytes, name: str) -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune").id


def _messages(client: openai.OpenAI, job_id: str) -> list[str]:
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=1000)]


def _finished(client: openai.OpenAI, job_id: str) -> Any:
    job = client.fine_tuning.jobs.retrieve(job_id)
    return job if job.status in ("succeeded", "failed", "cancelled") else None


def test_upload_train_follow_events_and_chat_with_the_result(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    training = _upload(client, _jsonl(20), "train.jsonl")
    validation = _upload(client, _jsonl(4), "valid.jsonl")
    started = time.monotonic()
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=training,
        validation_file=validation,
        suffix="routing",
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}},
        },
    )
    done = _until("the job to finish", gateway, lambda: _finished(client, job.id))
    assert done.status == "succeeded", done.error
    name = done.fine_tuned_model
    assert name == f"ft:{TINY}:tunegate:routing:{job.id.removeprefix('ftjob-')}"
    reply = client.chat.completions.create(
        model=name,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}],
        max_tokens=4,
    )
    seconds = time.monotonic() - started
    assert reply.choices[0].message.content is not None
    print(f"\njob created -> first answer from {name}: {seconds:.1f} s (tiny model)")

    assert done.trained_tokens and done.trained_tokens > 0
    assert name in [m.id for m in client.models.list()]
    # 20 examples / 4 per step * 2 epochs = 10 steps; a checkpoint every 10.
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    metrics = [e.data for e in events if e.type == "metrics"]
    steps = sorted({m["step"] for m in metrics if "train_loss" in m})  # type: ignore[index,operator]
    assert steps == list(range(1, 11))
    assert any("valid_loss" in m for m in metrics)  # type: ignore[operator]
    # OpenAI's token accuracy beside each loss: a share of the label tokens.
    for loss, accuracy in (
        ("train_loss", "train_mean_token_accuracy"),
        ("valid_loss", "valid_mean_token_accuracy"),
    ):
        shares = [m[accuracy] for m in metrics if loss in m]  # type: ignore[index,operator]
        assert shares and all(0.0 <= a <= 1.0 for a in shares)
    assert events[0].message == "The job has successfully completed"
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [10]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{name}:ckpt-step-10"
    assert checkpoints[0].metrics.train_loss is not None
    assert checkpoints[0].metrics.train_mean_token_accuracy is not None
    # The result file is the metrics CSV, downloadable like any file.
    (result,) = done.result_files
    csv_text = client.files.content(result).text
    assert csv_text.splitlines()[0].startswith(
        "step,train_loss,valid_loss,train_mean_token_accuracy,valid_mean_token_accuracy"
    )
    assert len(csv_text.splitlines()) >= 11


def test_distillation_from_a_teachers_stored_completions(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    """OpenAI's distillation flow: chat with `store: true` + metadata to the teacher, then a
    `distillation` job trains on a file the worker builds from those completions."""
    tag = {"task": "routing", "run": f"distill-{time.time_ns()}"}
    for i in range(8):
        client.chat.completions.create(
            model=TINY,
            messages=[{"role": "user", "content": f"Ticket {i}: my {LABELS[i % 4]} is broken"}],
            max_tokens=4,
            store=True,
            metadata=tag,
        )
    # `distillation` is tunegate's extension: the client's `method` type does not list it,
    # and its `training_file` is left out (the worker builds it), hence omit + extra_body.
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=openai.omit,  # type: ignore[arg-type]
        suffix="distilled",
        extra_body={
            "method": {
                "type": "distillation",
                "distillation": {
                    "teacher": TINY,
                    "metadata": tag,
                    "hyperparameters": {"n_epochs": 1, "batch_size": 4},
                },
            }
        },
    )
    done = _until("the distillation job", gateway, lambda: _finished(client, job.id))
    assert done.status == "succeeded", done.error
    built = client.files.retrieve(done.training_file)
    assert built.purpose == "fine-tune"
    examples = client.files.content(built.id).text.splitlines()
    assert 0 < len(examples) <= 8
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    assert any(e.message.startswith(f"Built training file {built.id}") for e in events)
    metrics = [e.data for e in events if e.type == "metrics"]
    assert metrics and all("train_mean_token_accuracy" in m for m in metrics)  # type: ignore[operator]
    reply = client.chat.completions.create(
        model=done.fine_tuned_model or "",
        messages=[{"role": "user", "content": "Ticket 9: my roaming is broken"}],
        max_tokens=4,
    )
    assert reply.choices[0].message.content is not None


def test_a_bad_file_fails_in_validation_with_line_numbers(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    job = client.fine_tuning.jobs.create(model=TINY, training_file=_upload(client, BAD, "b.jsonl"))
    done = _until("validation to fail", gateway, lambda: _finished(client, job.id))
    assert done.status == "failed" and done.error is not None
    assert done.error.param == "training_file"
    assert "line 4: example_missing_assistant_message" in done.error.message
    assert "line 5: invalid_json" in done.error.message
    assert done.fine_tuned_model is None


def _long_job(client: openai.OpenAI) -> str:
    return client.fine_tuning.jobs.create(
        model=TINY,
        training_file=_upload(client, _jsonl(24), "long.jsonl"),
        hyperparameters={"n_epochs": 50, "batch_size": 4},  # 300 steps: never done in time
    ).id


def _step_events(client: openai.OpenAI, job_id: str) -> list[int]:
    events = client.fine_tuning.jobs.list_events(job_id, limit=1000)
    return [e.data["step"] for e in events if e.type == "metrics"]  # type: ignore[index]


def test_cancel_stops_a_running_job(gateway: RunningGateway, client: openai.OpenAI) -> None:
    job_id = _long_job(client)
    _until("training steps", gateway, lambda: len(_step_events(client, job_id)) >= 2)
    assert client.fine_tuning.jobs.cancel(job_id).status == "cancelled"
    # The worker reads the job's status at the end of each step, then logs that step, so
    # the step in flight stops the run; but the one whose check just passed may not have
    # logged yet when we read (seen on a fast host: 3 read, then 4 and 5 logged), so at
    # most two more steps. Not stopping would log several more in 2 s there.
    last = max(_step_events(client, job_id))
    time.sleep(2.0)
    assert max(_step_events(client, job_id)) <= last + 2
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "cancelled" and job.fine_tuned_model is None


def test_a_killed_worker_is_restarted_resumes_its_job_and_runs_the_queued_one(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    state = JobState(gateway.home)
    running = _long_job(client)
    queued = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=_upload(client, _jsonl(8), "short.jsonl"),
        hyperparameters={"n_epochs": 1, "batch_size": 4},
    ).id
    _until(
        "a checkpoint",
        gateway,
        lambda: list(client.fine_tuning.jobs.checkpoints.list(running)),
    )
    worker = state.get_job(running).worker
    assert worker is not None
    os.kill(int(worker.rpartition(":")[2]), signal.SIGKILL)

    # `tunegate serve` starts a new worker, which queues the job again and resumes it.
    _until(
        "the resume",
        gateway,
        lambda: any(m.startswith("Resuming from") for m in _messages(client, running)),
    )
    assert client.fine_tuning.jobs.retrieve(queued).status == "queued"
    assert client.fine_tuning.jobs.cancel(running).status == "cancelled"
    done = _until("the queued job", gateway, lambda: _finished(client, queued))
    assert done.status == "succeeded", done.error
    assert any("stopped before it finished" in m for m in _messages(client, running))
