"""`tunegate data from-stored` and `tunegate captures` as a user runs them, on a home whose
captures file holds stored completions (written through `CaptureStore`, the gateway's own
writer seam; tests/integration/test_gateway_capture.py fills it through a real gateway)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from adapters_store.bases import BaseModel
from gateway.capture import Capture, CaptureStore
from gateway.capture.testing import sample_capture
from tests.e2e.test_cli_store import ok, refused

TINY = "tiny-random-llama"


def _stored(request_id: str, label: str, **extra: Any) -> Capture:
    request = {
        "messages": [
            {"role": "system", "content": "Route the ticket to one team."},
            {"role": "user", "content": f"ticket about {label}"},
        ]
    }
    return sample_capture(request_id, request=request, response=label, **extra)


def test_from_stored_writes_a_file_that_validates(
    home: Path, tmp_path: Path, tiny_model: BaseModel
) -> None:
    store = CaptureStore(home / "captures.sqlite3")
    labels = ["billing", "outage", "sales", "billing", "outage"]
    store.write([_stored(f"chatcmpl-{i}", label) for i, label in enumerate(labels)])
    store.write([_stored("chatcmpl-other", "x", metadata={"task": "tagging"})])
    store.close()
    out = tmp_path / "data" / "stored.jsonl"

    said = ok("data", "from-stored", "--metadata", "task=routing", "--out", str(out))
    assert said.startswith(f"{out}: 5 example(s)")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["messages"][-1] for r in rows] == [
        {"role": "assistant", "content": label} for label in labels
    ]
    report = json.loads(ok("data", "validate", str(out), "--base", TINY, "--json"))
    assert report["ok"] and report["examples"] == 5
    assert not [p for p in report["problems"] if p["severity"] == "error"]

    # Refusals: one line, and the file already written is left as it was.
    before = out.read_bytes()
    assert "exists" in refused(
        "data", "from-stored", "--metadata", "task=routing", "--out", str(out)
    )
    assert "no stored chat completion matches metadata task=nothing" in refused(
        "data", "from-stored", "--metadata", "task=nothing", "--out", str(out), "--force"
    )
    assert "KEY=VALUE" in refused(
        "data", "from-stored", "--metadata", "routing", "--out", str(out), "--force"
    )
    assert "--since" in refused(
        "data",
        "from-stored",
        "--metadata",
        "task=routing",
        "--since",
        "yesterday",
        "--out",
        str(out),
        "--force",
    )
    assert out.read_bytes() == before
    assert "model beta" in refused(
        "data",
        "from-stored",
        "--metadata",
        "task=routing",
        "--model",
        "beta",
        "--out",
        str(tmp_path / "none.jsonl"),
    )
    assert not (tmp_path / "none.jsonl").exists()


def test_captures_list_show_remove(home: Path) -> None:
    assert "nothing was captured" in refused("captures", "list")
    store = CaptureStore(home / "captures.sqlite3")
    store.write([_stored("chatcmpl-a", "billing"), _stored("chatcmpl-b", "outage")])
    store.write([_stored("chatcmpl-old", "sales", expires_at=time.time() - 1)])
    store.close()

    listed = ok("captures", "list").splitlines()
    assert listed[0].split()[:3] == ["CREATED", "REQUEST_ID", "ARTIFACT"]
    assert [line.split()[1] for line in listed[1:]] == ["chatcmpl-a", "chatcmpl-b"]
    shown = json.loads(ok("captures", "show", "chatcmpl-a"))
    assert shown["response"] == "billing" and shown["metadata"] == {"task": "routing"}

    assert "chatcmpl-nope" in refused("captures", "rm", "chatcmpl-a", "chatcmpl-nope")
    assert len(json.loads(ok("captures", "list", "--json"))) == 2  # nothing removed
    assert ok("captures", "rm", "chatcmpl-a").strip() == "removed 1 capture(s)"
    assert "expired" in refused("captures", "show", "chatcmpl-a")
    assert ok("captures", "purge").strip() == "deleted 1 expired capture(s)"
    assert [c["request_id"] for c in json.loads(ok("captures", "list", "--json"))] == ["chatcmpl-b"]
