"""`tunegate worker --once` as a user runs it: queued jobs in a fresh home are validated,
trained on the tiny model and published under their `ft:` name; a bad file fails with line
numbers; a job a dead worker left `running` is resumed from its checkpoint."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from adapters_store import BaseRegistry, Store
from adapters_store.bases import BaseModel
from finetune.names import store_name_for
from finetune.state import JobRow, JobState

TINY = "tiny-random-llama"


def _jsonl(n: int) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"ticket {i}"},
                {"role": "assistant", "content": ["billing", "outage"][i % 2]},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _job(state: JobState, data: bytes, epochs: int = 1) -> JobRow:
    upload = state.add_file(io.BytesIO(data), "t.jsonl", "fine-tune", None, 10**6)
    return state.create_job(
        owner=None,
        model=TINY,
        training_file=upload.id,
        validation_file=None,
        suffix="e2e",
        seed=0,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": epochs,
                    "batch_size": 4,
                    "learning_rate_multiplier": 1.0,
                }
            },
        },
        metadata=None,
    )


def _worker_once() -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TUNEGATE_FINETUNE_SAVE_STEPS": "2", "TUNEGATE_FINETUNE_LORA_RANK": "4"}
    return subprocess.run(
        [sys.executable, "-m", "tunegate", "worker", "--once"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_worker_once_trains_publishes_fails_bad_files_and_resumes(
    home: Path, tiny_model: BaseModel
) -> None:
    state = JobState(home)
    good = _job(state, _jsonl(8))
    bad = _job(state, _jsonl(2) + b'{"messages": []}\n')
    crashed = _job(state, _jsonl(8), epochs=2)
    # A worker that died after its checkpoint at step 2: run it once, then fake the crash.
    result = _worker_once()
    assert result.returncode == 0, result.stderr

    done = state.get_job(good.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{TINY}:tunegate:e2e:{good.id.removeprefix('ftjob-')}"
    store = Store(home / "store", BaseRegistry(home / "models"))
    version = store.resolve(store_name_for(done.fine_tuned_model) or "")
    assert version.card["fine_tuned_model"] == done.fine_tuned_model
    assert version.base == TINY and version.kind == "lora"
    store.close()

    failed = state.get_job(bad.id)
    assert failed.status == "failed" and failed.error is not None
    assert "line 3: missing_messages_list" in failed.error["message"]

    # The third job ran to the end too; rewind it to "running" on a dead worker with its
    # checkpoints in place: the next worker resumes it rather than starting over.
    assert state.get_job(crashed.id).status == "succeeded"
    dead = f"{socket.gethostname()}:999999"  # no such pid on this host
    state.set_columns(crashed.id, status="running", worker=dead, attempts=1)
    assert _worker_once().returncode == 0
    messages = [e.message for e in state.list_events(crashed.id, limit=1000).data]
    assert any(m.startswith("Resuming from the last checkpoint") for m in messages)
    assert any("stopped before it finished" in m for m in messages)
    assert state.get_job(crashed.id).status == "succeeded"
