"""The retraining loop end to end on the tiny model, as a user runs it: `tunegate tune`, serve
(capture on), traffic, corrected feedback, `tunegate retrain --from-feedback`, a 50% canary
answering beside the stable version with per-version figures in `tunegate monitor`,
promotion, rollback, and every store change read back from `tunegate audit --json`.

The canary split is measured over 200 callers (distinct `user` fields) through the real
gateway and must be exactly the split the sticky hash assigns: the gateway's choice, not
the test's, decides which version answered (the `x-tunegate-artifact` header)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from adapters_store import BaseRegistry, Store
from adapters_store.bases import BaseModel
from gateway.routing import canary_bucket, sticky_id
from gateway.serving import ARTIFACT_HEADER
from tests.integration.conftest import RunningGateway, launch_gateway
from tuner.tasks import get_task

pytestmark = [pytest.mark.engine, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TASK = "telecom-routing"
CALLERS = 200
PERCENT = 50
# Tickets the generator does not phrase this way (so none is a held-out test question),
# each with the label a reviewer would correct the answer to.
CORRECTIONS = {
    "My phone shows no signal anywhere in town since this morning.": "network_outage",
    "I was charged twice for the same month, please refund one.": "billing_dispute",
    "Data does not work while I travel in Portugal.": "roaming",
}
CAPTURE_ENV = {
    "TUNEGATE_GATEWAY_CAPTURE_ARTIFACTS": json.dumps([{"pattern": "telecom", "retention_days": 1}]),
}
# A random tiny model may stop at once; answers of a fixed length are never empty.
FIXED = {"ignore_eos": True}


def tunegate(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TUNEGATE_HOME": str(home)}
    env.pop("TUNEGATE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "tunegate", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )


def ok(home: Path, *args: str) -> str:
    result = tunegate(home, *args)
    assert result.returncode == 0, f"tunegate {' '.join(args)}:\n{result.stderr[-3000:]}"
    return result.stdout


def _answered_by(client: OpenAI, user: str) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model="telecom@prod",
        messages=[{"role": "user", "content": "My bill is too high."}],
        max_tokens=1,
        temperature=0,
        user=user,
        extra_body=FIXED,
    )
    return raw.headers[ARTIFACT_HEADER]


def _split(client: OpenAI, users: list[str]) -> dict[str, str]:
    """Which version answered each user (requests in parallel, as callers would send)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(users, pool.map(lambda u: _answered_by(client, u), users), strict=True))


def _sync(gw: RunningGateway) -> None:
    """Until the gateway has read the store's latest change (publish, alias, canary)."""
    store = Store(gw.home / "store", BaseRegistry(gw.home / "models"))
    try:
        gw.wait_for_store_generation(store.generation())
    finally:
        store.close()


def _wait_for_records(home: Path, count: int, timeout_s: float = 60.0) -> None:
    """Until the accounting writer has flushed `count` records (not a latency assertion)."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        conn = sqlite3.connect(home / "accounting.sqlite3", timeout=30)
        try:
            seen = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        finally:
            conn.close()
        if seen >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{seen} accounting records after {timeout_s} s, expected {count}")


def test_feedback_retrain_canary_promote_rollback_audit(home: Path, tiny_model: BaseModel) -> None:
    started = time.monotonic()

    def lap(step: str) -> None:  # where the minutes go, shown with `pytest -s`
        print(f"[{time.monotonic() - started:6.1f} s] {step}")

    Store(home / "store", BaseRegistry(home / "models")).close()  # one creator, then two
    task = get_task(TASK)
    # Training and the engine's start-up overlap (~1 min saved); the gateway's store watcher
    # sees the publish whenever it lands.
    with ThreadPoolExecutor(max_workers=1) as background:
        tuning = background.submit(
            ok,
            home,
            "tune",
            "recipes/telecom-routing/lora.yaml",
            f"base={tiny_model.id}",
            "n_train=16",
            "n_valid=4",
            "n_test=6",
            "max_steps=2",
            "batch_size=4",
            "few_shot_k=0",
        )
        with launch_gateway(home, tiny_model, env=CAPTURE_ENV) as gw:
            lap("gateway up")
            assert tuning.result().strip().splitlines()[-1] == "telecom@1"
            ok(home, "store", "alias", "telecom@1", "prod")
            _sync(gw)
            lap("tuned telecom@1")
            client = OpenAI(base_url=gw.v1, api_key="none")
            for n, (question, label) in enumerate(CORRECTIONS.items()):
                raw = client.chat.completions.with_raw_response.create(
                    model="telecom@prod",
                    messages=[{"role": "user", "content": question}],
                    max_tokens=4,
                    temperature=0,
                    user=f"reviewer-{n}",
                    extra_body=FIXED,
                )
                assert raw.headers[ARTIFACT_HEADER] == "telecom@1"
                posted = httpx.post(
                    gw.v1 + "/feedback",
                    json={
                        "request_id": raw.headers["x-request-id"],
                        "rating": -1,
                        "correction": label,
                    },
                    timeout=30,
                )
                assert posted.status_code == 200, posted.text

            lap("traffic and feedback sent")
            result = tunegate(
                home, "retrain", "telecom@prod", "--from-feedback", "--json", "max_steps=2"
            )
            assert result.returncode == 0, result.stderr[-3000:]
            report = json.loads(result.stdout)
            assert (report["current"], report["new"], report["alias"]) == (
                "telecom@1",
                "telecom@2",
                "canary",
            )
            assert report["decision"] == "published" and report["not_worse"]
            assert report["data"]["original_examples"] == 16
            assert report["data"]["feedback_examples"] == len(CORRECTIONS)
            assert set(report["delta"]) == {"accuracy", "macro_f1"}
            for metric, delta in report["delta"].items():
                new, current = (
                    report["metrics"]["new"][metric],
                    report["metrics"]["current"][metric],
                )
                assert delta == pytest.approx(new - current) and delta >= 0
            trained_on = [
                json.loads(x) for x in Path(report["data"]["train_file"]).read_text().splitlines()
            ]
            corrected = {
                r["messages"][-2]["content"]: r["messages"][-1]["content"] for r in trained_on[16:]
            }
            assert corrected == CORRECTIONS
            assert trained_on[16]["messages"][0]["content"] == task.system_prompt  # as served

            lap("retrained")
            assert "canary telecom@2 for 50% of callers" in ok(
                home, "store", "alias", "telecom@canary", "prod", "--canary", str(PERCENT)
            )
            _sync(gw)
            users = [f"user-{i}" for i in range(CALLERS)]
            split = _split(client, users)
            counts = Counter(split.values())
            lap(f"{CALLERS} canary requests")
            expected = {
                u: "telecom@2"
                if canary_bucket("telecom@prod", sticky_id(None, u) or "") < PERCENT
                else "telecom@1"
                for u in users
            }
            shares = dict(sorted(counts.items()))
            print(f"\ncanary split over {CALLERS} callers at {PERCENT}%: {shares}")
            assert split == expected  # both versions answer, each caller where its hash says
            assert set(counts) == {"telecom@1", "telecom@2"}
            again = _split(client, users[:20])
            assert again == {u: split[u] for u in users[:20]}  # sticky: a user sees one version

            _wait_for_records(home, len(CORRECTIONS) + CALLERS + len(again))
            monitored = json.loads(ok(home, "monitor", "telecom@prod", "--since", "1h", "--json"))
            requests = {v["artifact"]: v["total"]["requests"] for v in monitored["versions"]}
            assert requests == {
                "telecom@1": counts["telecom@1"]
                + sum(v == "telecom@1" for v in again.values())
                + len(CORRECTIONS),
                "telecom@2": counts["telecom@2"] + sum(v == "telecom@2" for v in again.values()),
            }

            lap("monitored")
            assert ok(home, "store", "promote", "telecom").strip() == "telecom@prod -> telecom@2"
            _sync(gw)
            on_stable = [u for u in users if split[u] == "telecom@1"][:8]
            assert set(_split(client, on_stable).values()) == {"telecom@2"}

            assert ok(home, "store", "rollback", "telecom").strip() == "telecom@prod -> telecom@1"
            _sync(gw)
            assert set(_split(client, users[:8]).values()) == {"telecom@1"}

    lap("promoted, rolled back, gateway stopped")
    entries = json.loads(ok(home, "audit", "--json"))
    assert [(e["action"], e["subject"]) for e in entries] == [
        ("publish", "telecom@1"),
        ("alias", "telecom@prod"),
        ("publish", "telecom@2"),
        ("alias", "telecom@canary"),
        ("canary", "telecom@prod"),
        ("promote", "telecom@prod"),
        ("rollback", "telecom@prod"),
    ]
    assert entries[4]["after"] == {"version": 1, "canary": 2, "percent": PERCENT}
    assert entries[5]["before"] == {"version": 1, "canary": 2, "percent": PERCENT}
    assert entries[5]["after"] == {"version": 2} and entries[6]["after"] == {"version": 1}
    shown = json.loads(ok(home, "store", "show", "telecom@2", "--json"))
    assert shown["card"]["parent"] == "telecom@1"
    assert shown["card"]["retrain"]["feedback_examples"] == len(CORRECTIONS)
