"""`tunegate monitor` as a user runs it, over an accounting database written by the
gateway's own writer: an hour of traffic like the training mix, then an hour of shifted
traffic, with feedback on both."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from adapters_store.bases import BaseModel
from adapters_store.profile import TrainingProfile
from adapters_store.testing import write_lora
from gateway.accounting import BatchWriter, SQLiteSink, UsageRecord
from gateway.feedback import FeedbackStore
from tests.e2e.test_cli_store import ok, refused

LABELS = ("billing", "roaming", "outage", "security")


def _profile() -> TrainingProfile:
    rng = np.random.default_rng(0)
    answers = [lab for lab in LABELS for _ in range(50)]
    prompts = [list(rng.integers(0, 500, size=int(rng.integers(60, 91)))) for _ in answers]
    return TrainingProfile.build(prompts, answers, LABELS, vocab_size=1000)


def _record(
    request_id: str, at: float, artifact: str, label: str, e2e_ms: float = 100.0
) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        created_at=at,
        key_id=None,
        operation="chat",
        requested_model="telecom@prod",
        artifact=artifact,
        prompt_tokens=75,
        completion_tokens=2,
        cached_tokens=0,
        queue_ms=1.0,
        ttft_ms=20.0,
        e2e_ms=e2e_ms,
        status="ok",
        http_status=200,
        finish_reason="stop",
        cost_usd=0.0001,
        answer_label=label,
        prompt_oov_share=0.0,
    )


def _traffic(home: Path, now: float) -> None:
    """Hour 1 (ending an hour ago): 25 answers per label; hour 2: billing 70, others 10."""
    before = [lab for lab in LABELS for _ in range(25)]
    after = ["billing"] * 70 + [lab for lab in LABELS[1:] for _ in range(10)]
    sink = SQLiteSink(home / "accounting.sqlite3")
    writer = BatchWriter(sink, interval_s=0.01)
    for hour, labels in ((2, before), (1, after)):
        for i, label in enumerate(labels):
            writer.submit(
                _record(
                    f"req-{hour}-{i}",
                    now - hour * 3600 + 60 + i * 30,
                    "telecom@1",
                    label,
                    100.0 + i,
                )
            )
    writer.close()
    sink.close()
    feedback = FeedbackStore(home / "accounting.sqlite3")
    feedback.add("req-2-0", None, 1.0, None)
    feedback.add("req-1-0", None, -1.0, "roaming")
    feedback.add("req-1-1", None, None, "outage")


def test_monitor_shows_windows_feedback_and_flags_the_shifted_hour(
    home: Path, tmp_path: Path, tiny_model: BaseModel
) -> None:
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"labels": list(LABELS), "profile": _profile().to_card()}))
    adapter = write_lora(tmp_path / "adapter", tiny_model, r=4)
    ok("store", "publish", str(adapter), "--name", "telecom", "--card", str(card))
    ok("store", "alias", "telecom@1", "prod")
    now = time.time()
    _traffic(home, now)

    report = json.loads(ok("monitor", "telecom@prod", "--since", "2h", "--window", "1h", "--json"))
    assert report["ref"] == "telecom@prod" and report["window_s"] == 3600
    [version] = report["versions"]
    assert (version["artifact"], version["task"]) == ("telecom@1", "label")
    before, after = version["windows"]
    assert (before["requests"], after["requests"], version["total"]["requests"]) == (100, 100, 200)
    assert before["feedback"] == {"ratings": 1, "mean_rating": 1.0, "corrections": 0}
    assert after["feedback"] == {"ratings": 1, "mean_rating": -1.0, "corrections": 2}
    assert before["latency_ms_p50"] == 149.5  # 100..199 ms
    assert before["drift"]["labels"]["divergence"] == 0.0
    assert not before["drift"]["flagged"]
    assert after["drift"]["labels"]["divergence"] > 0.1
    assert after["drift"]["flagged"]
    assert after["drift"]["labels"]["shares"]["billing"] == 0.7

    text = ok("monitor", "telecom", "--since", "2h", "--window", "1h")
    rows = [line for line in text.splitlines() if re.match(r"\d{4}-\d\d-\d\dT|total ", line)]
    assert len(rows) == 3 and rows[1].endswith("DRIFT") and not rows[0].endswith("DRIFT")
    assert "answers vs training" in text

    assert "no requests" in ok("monitor", "telecom@1", "--since", "5m")

    # A canary on prod: `telecom@prod` shows both versions apart, `telecom@1` one of them.
    ok("store", "publish", str(adapter), "--name", "telecom", "--card", str(card))
    ok("store", "alias", "telecom@2", "prod", "--canary", "50")
    sink = SQLiteSink(home / "accounting.sqlite3")
    sink.write([_record("canary-0", now - 60, "telecom@2", "roaming")])
    sink.close()
    both = json.loads(ok("monitor", "telecom@prod", "--since", "2h", "--json"))
    assert [v["artifact"] for v in both["versions"]] == ["telecom@1", "telecom@2"]
    assert both["versions"][1]["total"]["requests"] == 1
    one = json.loads(ok("monitor", "telecom@1", "--since", "2h", "--json"))
    assert [v["artifact"] for v in one["versions"]] == ["telecom@1"]
    assert "invalid --since" in refused("monitor", "telecom", "--since", "yesterday")
    assert "invalid duration" in refused("monitor", "telecom", "--window", "0h")
    assert "no artifact named" in refused("monitor", "nope@prod")
