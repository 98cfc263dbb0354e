"""Monitoring through a real gateway on the tiny model: what each request records (the
answer's label category and the prompt's OOV share, rendered by vLLM exactly as the tuner
rendered the training prompts), the drift gauge at /metrics, and `tunegate monitor`."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI
from transformers import AutoTokenizer

from adapters_store import BaseRegistry, Store
from adapters_store.bases import BaseModel
from adapters_store.profile import OTHER
from tests.integration.conftest import launch_gateway, make_peft_adapter
from tuner.profile import profile_training_data
from tuner.recipe import Recipe
from tuner.tasks import get_task
from tuner.train import prepare_data

TASK = "telecom-routing"


def test_requests_record_categories_and_drift_reaches_metrics_and_the_cli(
    home: Path, tiny_model: BaseModel
) -> None:
    task = get_task(TASK)
    recipe = Recipe(name="telecom", task=TASK, base=tiny_model.id, n_train=40, n_valid=8)
    data = prepare_data(recipe, home, echo=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    profile = profile_training_data(data.train, tokenizer, task.labels, data.valid)
    store = Store(home / "store", BaseRegistry(home / "models"))
    adapter = make_peft_adapter(tiny_model, home / "adapter-src", seed=1)
    card = {"task": TASK, "labels": list(task.labels), "profile": profile.to_card()}
    store.publish(adapter, "telecom", card=card)
    store.close()
    trained: list[Any] = json.loads(data.train.read_text().splitlines()[0])["messages"][:-1]
    novel: list[Any] = task.messages("Zebras quantum hovercraft marmalade xylophone?")

    env = {
        "TUNEGATE_GATEWAY_MONITOR_REFRESH_S": "0.5",
        "TUNEGATE_GATEWAY_MONITOR_MIN_REQUESTS": "3",
    }
    with launch_gateway(home, tiny_model, env=env) as gw:
        client = OpenAI(base_url=gw.v1, api_key="none")
        ids = []
        for messages in (trained, novel, trained):
            raw = client.chat.completions.with_raw_response.create(
                model="telecom", messages=messages, max_tokens=6, temperature=0
            )
            ids.append(raw.headers["x-request-id"])
        stream = client.chat.completions.create(
            model="telecom", messages=trained, max_tokens=6, temperature=0, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) is not None
        feedback = httpx.post(
            gw.v1 + "/feedback", json={"request_id": ids[0], "rating": -1, "correction": "roaming"}
        )
        assert feedback.status_code == 200, feedback.text

        # The gauge appears once the watcher has read the records (refresh every 0.5 s).
        gauge = None
        for _ in range(120):
            metrics = httpx.get(gw.url + "/metrics", timeout=10).text
            gauge = next(
                (
                    line
                    for line in metrics.splitlines()
                    if line.startswith("tunegate_drift_label_divergence")
                    and 'tunegate_artifact="telecom@1"' in line
                ),
                None,
            )
            if gauge is not None:
                break
            time.sleep(0.5)
        assert gauge is not None, "no drift gauge for telecom@1 at /metrics"
        assert 0.0 <= float(gauge.rsplit(" ", 1)[1]) <= 1.0
        assert "tunegate_feedback_total{" in metrics

    conn = sqlite3.connect(home / "accounting.sqlite3")
    rows = dict(
        (r[0], r[1:])
        for r in conn.execute("SELECT request_id, answer_label, prompt_oov_share FROM requests")
    )
    conn.close()
    assert len(rows) == 4
    assert {r[0] for r in rows.values()} <= {*task.labels, OTHER}
    # vLLM's rendering of a training conversation uses only tokens the training prompts used.
    assert rows[ids[0]][1] == 0.0 and rows[ids[2]][1] == 0.0
    assert rows[ids[1]][1] is not None and rows[ids[1]][1] > 0.0

    result = subprocess.run(
        [sys.executable, "-m", "tunegate", "monitor", "telecom", "--since", "1h", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "TUNEGATE_HOME": str(home)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [version] = json.loads(result.stdout)["versions"]
    total = version["total"]
    assert (version["artifact"], version["task"], total["requests"]) == ("telecom@1", "label", 4)
    assert total["feedback"] == {"ratings": 1, "mean_rating": -1.0, "corrections": 1}
    assert total["drift"]["labels"]["answers"] == 4
