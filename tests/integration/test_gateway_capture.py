"""Capture through a running gateway, driven by the official `openai` client: nothing kept
by default, kept for a configured artifact (streams assembled), `store: true` kept
regardless, retention expiry, removal per request id, tenant scoping, and stored
completions -> `tunegate data from-stored` -> `tunegate data validate`."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from adapters_store.bases import BaseModel
from gateway.auth import KeyStore
from tests.integration.conftest import TINY, RunningGateway, gateway_home, launch_gateway

pytestmark = [pytest.mark.engine, pytest.mark.slow]

USER = [{"role": "user", "content": "Name three colours."}]
# A random tiny model may stop at once; answers of a fixed length are never empty.
FULL_LENGTH = {"ignore_eos": True}
RETENTION_S = 30  # beta's captures: long enough to read back, short enough to see expire
CAPTURE_ENV = {
    "TUNEGATE_GATEWAY_CAPTURE_ARTIFACTS": json.dumps(
        [
            {"pattern": "beta", "retention_days": RETENTION_S / 86400},
            {"pattern": "alpha", "retention_days": 1},
        ]
    ),
    "TUNEGATE_GATEWAY_CAPTURE_PURGE_INTERVAL_S": "0.5",
}


def _rows(home: Path, ids: list[str]) -> list[str]:
    path = home / "captures.sqlite3"
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        marks = ",".join("?" * len(ids))
        found = conn.execute(f"SELECT request_id FROM captures WHERE request_id IN ({marks})", ids)
        return sorted(r[0] for r in found)
    finally:
        conn.close()


def _stream(client: openai.OpenAI, model: str, **extra: Any) -> tuple[str, str]:
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=USER,
            max_tokens=8,
            temperature=0.0,
            stream=True,
            extra_body=FULL_LENGTH,
            **extra,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks[0].id, text


def test_nothing_is_captured_by_default(gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=gateway.v1, api_key="x", max_retries=0)
    ids = [
        client.chat.completions.create(model=model, messages=USER, max_tokens=4).id
        for model in (TINY, "alpha", "beta")
    ]
    ids.append(_stream(client, "alpha")[0])
    ids.append(client.completions.create(model="beta", prompt="Colours:", max_tokens=4).id)
    # Listing flushes the gateway's capture writer: whatever it kept is in the file now.
    assert not {c.id for c in client.chat.completions.list().data} & set(ids)
    for request_id in ids:
        assert httpx.get(f"{gateway.v1}/captures/{request_id}").status_code == 404
    assert _rows(gateway.home, ids) == []

    # `store: true` is the client asking: kept with capture off.
    stored = client.chat.completions.create(
        model="alpha", messages=USER, max_tokens=4, store=True, metadata={"run": "default"}
    )
    got = client.chat.completions.retrieve(stored.id)
    assert got.choices[0].message.content == stored.choices[0].message.content
    assert _rows(gateway.home, [stored.id]) == [stored.id]
    client.chat.completions.delete(stored.id)
    assert _rows(gateway.home, [stored.id]) == []


@dataclass
class Captured:
    gw: RunningGateway
    acme: openai.OpenAI
    globex: openai.OpenAI
    keys: dict[str, str]


@pytest.fixture(scope="module")
def captured(
    tmp_path_factory: pytest.TempPathFactory, shared_models_dir: Path, tiny_model: BaseModel
) -> Iterator[Captured]:
    home = gateway_home(tmp_path_factory.mktemp("capture-home"), shared_models_dir, tiny_model)
    table = KeyStore(home / "keys.sqlite3")
    keys = {name: table.create(name, ["*"])[1] for name in ("acme", "globex")}
    with launch_gateway(home, tiny_model, CAPTURE_ENV) as gw:
        yield Captured(
            gw,
            openai.OpenAI(base_url=gw.v1, api_key=keys["acme"], max_retries=0),
            openai.OpenAI(base_url=gw.v1, api_key=keys["globex"], max_retries=0),
            keys,
        )


def test_a_configured_artifact_is_captured_scoped_and_removable(captured: Captured) -> None:
    acme, globex, gw = captured.acme, captured.globex, captured.gw
    made = acme.chat.completions.create(
        model="alpha",
        messages=USER,
        max_tokens=8,
        temperature=0.0,
        metadata={"ui": "chat"},
        extra_body=FULL_LENGTH,
    )
    stream_id, streamed = _stream(acme, "alpha")
    base = acme.chat.completions.create(model=TINY, messages=USER, max_tokens=4)

    got = acme.chat.completions.retrieve(made.id)
    assert got.choices[0].message.content == made.choices[0].message.content
    assert got.model == "alpha@1"
    headers = {"Authorization": f"Bearer {captured.keys['acme']}"}
    stream_capture = httpx.get(f"{gw.v1}/captures/{stream_id}", headers=headers).json()
    assert stream_capture["response"] == streamed and streamed
    assert stream_capture["request"] == {"messages": USER}
    assert stream_capture["key_id"] == "acme" and stream_capture["stored"] is False
    with pytest.raises(openai.NotFoundError):  # the base model has no capture rule
        acme.chat.completions.retrieve(base.id)

    # Another tenant: exactly as if the captures did not exist.
    for request_id in (made.id, stream_id):
        with pytest.raises(openai.NotFoundError):
            globex.chat.completions.retrieve(request_id)
        with pytest.raises(openai.NotFoundError):
            globex.chat.completions.delete(request_id)
    assert globex.chat.completions.list().data == []
    assert {c.id for c in acme.chat.completions.list().data} >= {made.id, stream_id}

    deleted = acme.chat.completions.delete(made.id)
    assert deleted.deleted and deleted.id == made.id
    with pytest.raises(openai.NotFoundError):
        acme.chat.completions.retrieve(made.id)
    removed = httpx.delete(f"{gw.v1}/captures/{stream_id}", headers=headers)
    assert removed.status_code == 200 and removed.json()["deleted"] is True
    assert _rows(gw.home, [made.id, stream_id, base.id]) == []


def test_captures_expire(captured: Captured) -> None:
    made = captured.acme.chat.completions.create(model="beta", messages=USER, max_tokens=4)
    headers = {"Authorization": f"Bearer {captured.keys['acme']}"}
    body = httpx.get(f"{captured.gw.v1}/captures/{made.id}", headers=headers).json()
    assert body["expires_at"] - body["created_at"] in (
        RETENTION_S - 1,
        RETENTION_S,
        RETENTION_S + 1,
    )
    # The gateway's purge (every 0.5 s here) deletes the row once its retention is over.
    deadline = time.monotonic() + RETENTION_S + 120
    while _rows(captured.gw.home, [made.id]) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert _rows(captured.gw.home, [made.id]) == []
    assert time.time() >= body["expires_at"]
    assert httpx.get(f"{captured.gw.v1}/captures/{made.id}", headers=headers).status_code == 404


def test_stored_completions_become_a_valid_training_file(
    captured: Captured, tmp_path: Path
) -> None:
    prompts = ["My bill is wrong.", "The network is down.", "I want a new phone."]
    for prompt in prompts:
        captured.acme.chat.completions.create(
            model=TINY,  # no capture rule: kept because of `store: true`
            messages=[
                {"role": "system", "content": "Route the ticket."},
                {"role": "user", "content": prompt},
            ],
            max_tokens=8,
            extra_body=FULL_LENGTH,
            store=True,
            metadata={"task": "routing"},
        )
    listed = captured.acme.chat.completions.list(metadata={"task": "routing"}).data
    assert len(listed) == 3
    out = tmp_path / "stored.jsonl"
    env = {**os.environ, "TUNEGATE_HOME": str(captured.gw.home)}
    env.pop("TUNEGATE_CONFIG", None)

    def tunegate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tunegate", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )

    made = tunegate("data", "from-stored", "--metadata", "task=routing", "--out", str(out))
    assert made.returncode == 0, made.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["messages"][1]["content"] for r in rows] == prompts
    assert [r["messages"][-1]["role"] for r in rows] == ["assistant"] * 3
    checked = tunegate("data", "validate", str(out), "--base", TINY, "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["examples"] == 3
