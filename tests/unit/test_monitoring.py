"""Monitoring maths against real accounting databases: windows, percentiles, feedback, drift
(a shifted label mix flags, an unshifted one does not), the schema migration, and what the
gateway records per request (label category, OOV share) and exports as metrics."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from litestar.testing import TestClient

from adapters_store import BaseModel, Store
from adapters_store.profile import OTHER, TrainingProfile, card_labels, normalise_answer
from gateway.accounting import BatchWriter, SQLiteSink, UsageRecord
from gateway.config import EngineConfig
from gateway.engine import EngineSpec
from gateway.feedback import FeedbackStore
from gateway.monitoring import MonitorConfig
from gateway.monitoring.drift import js_divergence, label_drift, text_drift
from gateway.monitoring.report import monitor_report
from gateway.monitoring.windows import Selector, read_windows
from gateway.testing import FakeEngine, fake_app
from tests.unit import test_gateway_routing as routing
from tunegate.config import load_settings

store = routing.store

LABELS = ("billing", "roaming", "outage", "security")
T0 = 1_800_000_000.0  # a fixed "now" for records: windows are exact, not clock-dependent


def _record(
    i: int,
    at: float,
    artifact: str = "t@1",
    *,
    e2e_ms: float = 100.0,
    prompt: int = 70,
    status: str = "ok",
    label: str | None = None,
    oov: float | None = None,
) -> UsageRecord:
    return UsageRecord(
        request_id=f"req-{i}",
        created_at=at,
        key_id=None,
        operation="chat",
        requested_model=artifact,
        artifact=artifact,
        prompt_tokens=prompt,
        completion_tokens=3,
        cached_tokens=0,
        queue_ms=0.0,
        ttft_ms=10.0,
        e2e_ms=e2e_ms,
        status=status,  # type: ignore[arg-type]
        http_status=200 if status == "ok" else 400,
        finish_reason="stop",
        cost_usd=0.001,
        answer_label=label,
        prompt_oov_share=oov,
    )


def _write(path: Path, records: Sequence[UsageRecord]) -> None:
    """Through the gateway's own writer and sink, as a running gateway writes them."""
    sink = SQLiteSink(path)
    writer = BatchWriter(sink, interval_s=0.01)
    for r in records:
        writer.submit(r)
    writer.close()
    sink.close()


def _profile(label_counts: dict[str, int] | None = None, vocab: int = 100) -> TrainingProfile:
    """Training: 50 examples per label, prompts of 60..90 tokens over ids 0..49."""
    counts = label_counts or dict.fromkeys(LABELS, 50)
    answers = [lab for lab, n in counts.items() for _ in range(n)]
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, 50, size=int(rng.integers(60, 91)))) for _ in answers]
    heldout = [list(rng.integers(0, 52, size=75)) for _ in range(20)]
    return TrainingProfile.build(prompts, answers, LABELS, vocab_size=vocab, heldout=heldout)


# ------------------------------------------------------------------ answers and profiles


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("billing", "billing"),
        ("  Roaming.\n", "roaming"),
        ("`outage`", "outage"),
        ("I think this is about security, or billing", "security"),
        ("BILLING please", "billing"),
        ("something else entirely", OTHER),
        ("", OTHER),
    ],
)
def test_answers_normalise_to_a_label_or_other(answer: str, label: str) -> None:
    assert normalise_answer(answer, LABELS) == label


def test_profile_round_trips_through_the_card() -> None:
    profile = _profile()
    stored = profile.to_card()
    card: dict[str, Any] = {"profile": stored, "labels": ["ignored"]}
    back = TrainingProfile.from_card(card)
    assert back is not None
    assert back.seen is not None and profile.seen is not None
    assert np.array_equal(back.seen, profile.seen)
    assert (back.labels, back.label_counts, back.length_counts) == (
        profile.labels,
        profile.label_counts,
        profile.length_counts,
    )
    assert back.heldout_oov_share == pytest.approx(profile.heldout_oov_share)
    assert back.heldout_oov_share is not None
    assert 0 < back.heldout_oov_share < 0.1  # ids 50, 51 are unseen: ~2/52 of held-out
    assert card_labels(card) == LABELS  # the profile's set wins over older card fields
    assert card_labels({"labels": ["a", "b"]}) == ("a", "b")
    assert card_labels({}) == ()
    # A card this code cannot read gives no profile rather than a wrong one.
    assert TrainingProfile.from_card({"profile": {**stored, "version": 99}}) is None
    assert TrainingProfile.from_card({"profile": {"version": 1}}) is None


def test_oov_share_counts_unseen_and_out_of_vocabulary_ids() -> None:
    profile = _profile()
    assert profile.oov_share([1, 2, 3, 4]) == 0.0
    assert profile.oov_share([1, 2, 60, 70]) == 0.5
    assert profile.oov_share([1, 500]) == 0.5  # past the stored vocabulary: never seen
    assert profile.oov_share([]) is None


# ------------------------------------------------------------------ divergence


def _js_reference(p: Sequence[float], q: Sequence[float]) -> float:
    a, b = np.asarray(p, float) / sum(p), np.asarray(q, float) / sum(q)
    m = (a + b) / 2

    def kl(x: np.ndarray, y: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / y[nz])))

    return (kl(a, m) + kl(b, m)) / 2


@pytest.mark.parametrize(
    ("p", "q"),
    [
        ([1, 1, 1, 1], [1, 1, 1, 1]),
        ([1, 0], [0, 1]),
        ([5, 3, 2, 0], [1, 1, 1, 1]),
        ([9, 1], [1, 9]),
    ],
)
def test_js_divergence_matches_the_definition(p: list[float], q: list[float]) -> None:
    assert js_divergence(p, q) == pytest.approx(_js_reference(p, q), abs=1e-12)
    assert 0.0 <= js_divergence(p, q) <= 1.0


def test_js_divergence_refuses_empty_or_mismatched_vectors() -> None:
    with pytest.raises(ValueError):
        js_divergence([0, 0], [1, 1])
    with pytest.raises(ValueError):
        js_divergence([1, 1], [1, 1, 1])


def _sample(mix: dict[str, float], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return list(rng.choice(list(mix), size=n, p=list(mix.values())))


@pytest.mark.parametrize("seed", range(5))
def test_label_mix_like_training_does_not_flag_and_a_shifted_one_does(
    tmp_path: Path, seed: int
) -> None:
    config = MonitorConfig()
    profile = _profile()
    uniform = dict.fromkeys(LABELS, 0.25)
    shifted = {"billing": 0.7, "roaming": 0.1, "outage": 0.1, "security": 0.1}
    db = tmp_path / "accounting.sqlite3"
    # Hour 0: the training mix; hour 1: billing floods in.
    records = [
        _record(i, T0 + i, label=lab) for i, lab in enumerate(_sample(uniform, 200, seed))
    ] + [
        _record(1000 + i, T0 + 3600 + i, label=lab)
        for i, lab in enumerate(_sample(shifted, 200, seed))
    ]
    _write(db, records)
    windows, _ = read_windows(db, Selector(name="t"), T0, T0 + 7200, 3600)
    before, after = (label_drift(w.label_counts, profile, config) for w in windows["t@1"])
    assert before.answers == after.answers == 200
    assert before.divergence is not None and after.divergence is not None
    assert before.divergence < config.label_threshold and not before.flagged
    assert after.divergence >= config.label_threshold and after.flagged
    assert after.shares["billing"] > 0.6


def test_answers_outside_the_label_set_are_drift_and_few_answers_never_flag() -> None:
    config = MonitorConfig(min_requests=30)
    profile = _profile()
    garbage = label_drift({OTHER: 100}, profile, config)
    assert garbage.divergence == pytest.approx(1.0)  # disjoint from every training label
    assert garbage.flagged
    few = label_drift({"billing": 10}, profile, config)
    assert few.divergence is not None and few.divergence > config.label_threshold
    assert not few.flagged
    assert label_drift({}, profile, config).divergence is None


def test_prompt_length_and_vocabulary_shift(tmp_path: Path) -> None:
    """Text figures: hour 0 like training (60..90 tokens, held-out OOV level), hour 1 three
    times as long, hour 2 as long as training but a quarter of the tokens unseen."""
    config = MonitorConfig()
    profile = _profile()
    baseline = profile.heldout_oov_share or 0.0
    rng = np.random.default_rng(1)
    hours = [
        (rng.integers(60, 91, size=200), baseline),
        (rng.integers(180, 271, size=200), baseline),
        (rng.integers(60, 91, size=200), 0.25),
    ]
    db = tmp_path / "accounting.sqlite3"
    _write(
        db,
        [
            _record(h * 1000 + i, T0 + h * 3600 + i, prompt=int(n), oov=oov)
            for h, (lengths, oov) in enumerate(hours)
            for i, n in enumerate(lengths)
        ],
    )
    windows, _ = read_windows(db, Selector(name="t"), T0, T0 + 3 * 3600, 3600)
    same, longer, new_words = (
        text_drift(
            w.length_counts, w.answered_prompt_tokens, w.oov_share, w.oov_requests, profile, config
        )
        for w in windows["t@1"]
    )
    assert not same.flagged
    assert same.length_ratio == pytest.approx(1.0, abs=0.05)
    assert same.length_divergence is not None and same.length_divergence < 0.05
    assert same.oov_shift == pytest.approx(0.0, abs=1e-9)
    assert longer.flagged and longer.length_ratio == pytest.approx(3.0, rel=0.1)
    assert longer.length_divergence is not None and longer.length_divergence > 0.5
    assert new_words.flagged
    assert new_words.length_divergence is not None and new_words.length_divergence < 0.05
    assert new_words.oov_shift == pytest.approx(0.25 - baseline)


# ------------------------------------------------------------------ windows over SQLite


def test_windows_percentiles_and_feedback_from_the_accounting_database(tmp_path: Path) -> None:
    db = tmp_path / "accounting.sqlite3"
    latencies = [float(x) for x in range(10, 1010, 10)]  # 100 answered requests in hour 0
    records = [_record(i, T0 + i, e2e_ms=ms) for i, ms in enumerate(latencies)]
    records += [_record(200, T0 + 200, status="rejected", e2e_ms=1.0)]
    records += [_record(300 + i, T0 + 3600 + i, artifact="t@2", e2e_ms=50.0) for i in range(3)]
    records += [_record(400, T0 + 10, artifact="other@1")]  # another artifact: not shown
    records += [_record(401, T0 - 10)]  # before --since: not shown
    _write(db, records)
    feedback = FeedbackStore(db)
    feedback.add("req-0", None, 1.0, None)
    feedback.add("req-1", None, -0.5, "roaming")
    feedback.add("req-300", None, None, "billing")

    windows, totals = read_windows(db, Selector(name="t"), T0, T0 + 7200, 3600)
    assert list(windows) == ["t@1", "t@2"]
    [w1] = windows["t@1"]
    assert (w1.start, w1.end) == (T0, T0 + 3600)
    assert (w1.requests, w1.errors) == (101, 1)
    assert w1.prompt_tokens == 70 * 101
    # Percentiles over answered requests only (the 1 ms refusal is not a latency).
    assert w1.latency_ms_p50 == pytest.approx(np.percentile(latencies, 50))
    assert w1.latency_ms_p95 == pytest.approx(np.percentile(latencies, 95))
    assert (w1.ratings, w1.mean_rating, w1.corrections) == (2, 0.25, 1)
    [w2] = windows["t@2"]
    assert (w2.start, w2.requests, w2.corrections, w2.ratings) == (T0 + 3600, 3, 1, 0)
    assert totals["t@1"].requests == 101 and totals["t@2"].requests == 3
    # Exact artifacts select one version; the window length splits the range.
    windows, _ = read_windows(db, Selector(artifacts=("t@1",)), T0, T0 + 100, 25)
    assert [w.requests for w in windows["t@1"]] == [25, 25, 25, 25]
    assert math.isclose(windows["t@1"][-1].end, T0 + 100)


def test_report_is_plain_data_with_drift_per_window(tmp_path: Path) -> None:
    db = tmp_path / "accounting.sqlite3"
    _write(db, [_record(i, T0 + i, label="billing", oov=0.0) for i in range(40)])
    profile = _profile()
    report = monitor_report(
        db,
        Selector(name="t"),
        lambda artifact: profile if artifact == "t@1" else None,
        MonitorConfig(min_requests=30),
        since=T0,
        until=T0 + 3600,
    )
    [version] = report["versions"]
    assert (version["artifact"], version["task"]) == ("t@1", "label")
    drift = version["total"]["drift"]
    assert drift["labels"]["shares"] == {
        "billing": 1.0,
        "roaming": 0.0,
        "outage": 0.0,
        "security": 0.0,
        OTHER: 0.0,
    }
    assert drift["flagged"] and version["windows"][0]["drift"]["flagged"]
    assert report["since"] == "2027-01-15T08:00:00Z"
    # Without a profile: figures, but no drift.
    plain = monitor_report(
        db, Selector(name="t"), lambda _: None, MonitorConfig(), since=T0, until=T0 + 3600
    )
    assert plain["versions"][0]["total"]["drift"] is None
    assert plain["versions"][0]["total"]["requests"] == 40


def test_bad_ranges_and_missing_database_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no accounting database"):
        read_windows(tmp_path / "none.sqlite3", Selector(name="t"), T0, T0 + 1, 1)
    assert not (tmp_path / "none.sqlite3").exists()  # reading never creates the file
    with pytest.raises(ValueError):
        read_windows(tmp_path / "none.sqlite3", Selector(name="t"), T0, T0, 1)


# ------------------------------------------------------------------ migration

_OLD_SCHEMA = """
CREATE TABLE requests (
    request_id TEXT PRIMARY KEY, created_at REAL NOT NULL, key_id TEXT,
    operation TEXT NOT NULL, requested_model TEXT NOT NULL, artifact TEXT,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL, queue_ms REAL, ttft_ms REAL, e2e_ms REAL NOT NULL,
    status TEXT NOT NULL, http_status INTEGER NOT NULL, finish_reason TEXT,
    cost_usd REAL NOT NULL
);
"""


def test_a_database_from_before_the_monitoring_columns_stays_readable(tmp_path: Path) -> None:
    db = tmp_path / "accounting.sqlite3"
    conn = sqlite3.connect(db)
    conn.executescript(_OLD_SCHEMA)
    conn.execute(
        "INSERT INTO requests VALUES ('old-1', ?, NULL, 'chat', 't', 't@1', 5, 1, 0, NULL, "
        "NULL, 20.0, 'ok', 200, 'stop', 0.0)",
        (T0,),
    )
    conn.commit()
    conn.close()
    # The monitor reads it as it is (no writes), as records without categories.
    windows, _ = read_windows(db, Selector(name="t"), T0, T0 + 60, 60)
    assert windows["t@1"][0].requests == 1 and not windows["t@1"][0].label_counts
    # A newer gateway adds the columns in place; old rows keep their values, NULL in the new.
    _write(db, [_record(1, T0 + 1, label="billing", oov=0.1)])
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT request_id, e2e_ms, answer_label, prompt_oov_share FROM requests ORDER BY 1"
    ).fetchall()
    conn.close()
    assert rows == [("old-1", 20.0, None, None), ("req-1", 100.0, "billing", 0.1)]
    _write(db, [])  # opening a migrated file again changes nothing
    windows, _ = read_windows(db, Selector(name="t"), T0, T0 + 60, 60)
    assert windows["t@1"][0].label_counts == {"billing": 1}


# ------------------------------------------------------------------ through the gateway


@pytest.fixture
def watched(home: Path, store: Store, tmp_path: Path, tiny_model: BaseModel) -> Store:
    """`billing@1`, a label artifact whose training prompts are rendered like the gateway's
    (the fake engine's renderer), and `plain@1` without a profile."""
    engine = FakeEngine(EngineSpec(routing.BASE, Path("/nowhere"), True), EngineConfig())
    train_texts = ["my bill is wrong", "charged twice this month", "roaming abroad costs"]
    prompts = [
        asyncio.run(engine.render_chat([{"role": "user", "content": t}])) for t in train_texts
    ]
    profile = TrainingProfile.build(prompts, ["billing", "billing", "roaming"], LABELS, 1000)
    routing._publish(store, tmp_path, tiny_model, "billing", profile=profile.to_card())
    routing._publish(store, tmp_path, tiny_model, "plain", seed=1)
    return store


@pytest.fixture
def client(home: Path, watched: Store) -> Iterator[TestClient[Any]]:
    settings = load_settings()
    settings.default_base = routing.BASE
    app, _ = fake_app(settings, store=watched)
    with TestClient(app) as c:
        yield c


def _chat(client: TestClient[Any], model: str, text: str, stream: bool = False) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 3,
        "stream": stream,
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def test_gateway_records_the_answer_label_and_oov_share_without_text(
    client: TestClient[Any], home: Path
) -> None:
    # The fake engine answers "<adapter> 0 1": "billing@1 0 1" names the label billing.
    seen = _chat(client, "billing", "my bill is wrong")
    unseen = _chat(client, "billing", "zebra quantum", stream=True)
    plain = _chat(client, "plain", "my bill is wrong")
    base = _chat(client, routing.BASE, "hello")
    client.app.state.services.writer.flush()
    conn = sqlite3.connect(home / "accounting.sqlite3")
    rows = {
        r[0]: r[1:]
        for r in conn.execute("SELECT request_id, answer_label, prompt_oov_share FROM requests")
    }
    conn.close()
    assert rows[seen] == ("billing", 0.0)
    label, share = rows[unseen]
    assert label == "billing"  # streamed answers are labelled too
    # The rendered prompt: <s> user zebra quantum </s> <s> assistant; only the two words
    # are unseen in training.
    assert share == pytest.approx(2 / 7)
    assert rows[plain] == (None, None)
    assert rows[base] == (None, None)


def test_drift_gauges_and_feedback_counters_at_metrics(client: TestClient[Any]) -> None:
    ids = [_chat(client, "billing", "charged twice this month") for _ in range(3)]
    client.post("/v1/feedback", json={"request_id": ids[0], "rating": 1})
    client.post("/v1/feedback", json={"request_id": ids[1], "rating": -1, "correction": "roaming"})
    client.app.state.services.writer.flush()
    snapshot = client.app.state.drift.refresh(time.time() + 1)
    assert set(snapshot) == {"billing@1"}
    # Training: billing 2/3, roaming 1/3; live: billing 3/3.
    assert snapshot["billing@1"].label_divergence == pytest.approx(
        js_divergence([3, 0, 0, 0, 0], [2, 1, 0, 0, 0]), abs=1e-4
    )
    assert not snapshot["billing@1"].flagged  # 3 answers: below min_requests
    text = client.get("/metrics").text
    gauge = next(
        line
        for line in text.splitlines()
        if line.startswith("tunegate_drift_label_divergence")
        and 'tunegate_artifact="billing@1"' in line
    )
    assert float(gauge.rsplit(" ", 1)[1]) == pytest.approx(
        snapshot["billing@1"].label_divergence, abs=1e-4
    )
    feedback = [line for line in text.splitlines() if line.startswith("tunegate_feedback_total")]
    by_kind = {
        ("rating" if 'kind="rating"' in line else "correction"): float(line.rsplit(" ", 1)[1])
        for line in feedback
        if 'tunegate_artifact="billing@1"' in line
    }
    assert by_kind == {"rating": 2.0, "correction": 1.0}
    rating_sum = [
        line
        for line in text.splitlines()
        if line.startswith("tunegate_feedback_rating_sum") and "billing@1" in line
    ]
    assert [float(line.rsplit(" ", 1)[1]) for line in rating_sum] == [0.0]  # 1 + (-1)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("TUNEGATE_GATEWAY_MONITOR_LABEL_THRESHOLD", "2"),
        ("TUNEGATE_GATEWAY_MONITOR_OOV_THRESHOLD", "0"),
        ("TUNEGATE_GATEWAY_MONITOR_WINDOW_S", "-1"),
        ("TUNEGATE_GATEWAY_MONITOR_MIN_REQUESTS", "0"),
    ],
)
def test_monitor_settings_are_validated(home: Path, var: str, value: str) -> None:
    with pytest.raises(ValueError, match=r"gateway\.monitor\."):
        load_settings(env={"TUNEGATE_HOME": str(home), var: value})
    defaults = load_settings(env={"TUNEGATE_HOME": str(home)}).gateway.monitor
    assert (defaults.label_threshold, defaults.min_requests) == (0.1, 100)
