"""`tunegate store` as a user runs it: subprocesses of the CLI on a fresh home."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from adapters_store.bases import BaseModel
from adapters_store.testing import write_lora


def tunegate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunegate", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )


def ok(*args: str) -> str:
    result = tunegate(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(*args: str) -> str:
    result = tunegate(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_store_lifecycle(home: Path, tmp_path: Path, tiny_model: BaseModel) -> None:
    adapter = write_lora(tmp_path / "adapter", tiny_model, r=8)
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"method": "lora", "metrics": {"accuracy": 0.77}}))

    assert ok("store", "publish", str(adapter), "--name", "telecom", "--card", str(card)) == (
        "telecom@1\n"
    )
    assert ok("store", "publish", str(adapter), "--name", "telecom", "--base", tiny_model.id) == (
        "telecom@2\n"
    )

    dora = write_lora(tmp_path / "dora", tiny_model, config={"use_dora": True})
    line = refused("store", "publish", str(dora), "--name", "telecom")
    assert "adapter_config.json: use_dora" in line
    line = refused("store", "publish", str(adapter), "--name", "../escape")
    assert "invalid name '../escape'" in line

    rows = json.loads(ok("store", "list", "--json"))
    assert [r["ref"] for r in rows] == ["telecom@1", "telecom@2"]
    assert rows[0]["card"]["metrics"] == {"accuracy": 0.77}
    assert rows[0]["card"]["rank"] == 8
    assert rows[0]["base"] == tiny_model.id
    assert Path(rows[0]["path"]) == home / "store" / "blobs" / "telecom" / "1"
    table = ok("store", "list")
    assert table.splitlines()[0].split() == ["REF", "KIND", "BASE", "RANK", "ALIASES", "CREATED"]
    assert "telecom@2" in table

    shown = json.loads(ok("store", "show", "telecom@1", "--json"))
    assert shown["card"]["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert set(shown["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    text = ok("store", "show", "telecom")
    assert text.startswith("telecom@2  (lora on tiny-random-llama")
    assert shown["files"]["adapter_model.safetensors"] in text

    assert "previous: none" in ok("store", "alias", "telecom@1", "prod")
    assert ok("store", "alias", "telecom@2", "prod").strip() == (
        "telecom@prod -> telecom@2 (previous: telecom@1)"
    )
    assert ok("store", "rollback", "telecom@prod").strip() == "telecom@prod -> telecom@1"
    assert json.loads(ok("store", "show", "telecom@prod", "--json"))["version"] == 1
    assert "invalid alias '7'" in refused("store", "alias", "telecom@1", "7")

    line = refused("store", "remove", "telecom@1")
    assert "telecom@prod" in line
    assert ok("store", "remove", "telecom@1", "--force").strip() == "removed telecom@1"
    assert "no alias 'prod'" in refused("store", "show", "telecom@prod")

    assert ok("store", "verify").strip() == "ok: 1 version verified"
    blob = home / "store" / "blobs" / "telecom" / "2"
    (blob / "adapter_config.json").write_text("{}")
    (blob / "adapter_model.safetensors").unlink()
    result = tunegate("store", "verify", "telecom@2")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "telecom@2: adapter_config.json: sha256 differs from the published one",
        "telecom@2: adapter_model.safetensors: missing",
    ]
    assert "no artifact named 'nope'" in refused("store", "verify", "nope")


def test_store_publish_model(home: Path, tmp_path: Path, tiny_model: BaseModel) -> None:
    folder = tmp_path / "student"
    shutil.copytree(tiny_model.path, folder)
    assert ok("store", "publish", str(folder), "--name", "student", "--kind", "model") == (
        "student@1\n"
    )
    shown = json.loads(ok("store", "show", "student", "--json"))
    assert shown["kind"] == "model"
    assert shown["base"] == tiny_model.id
    (folder / "pytorch_model.bin").write_bytes(b"\x80")
    line = refused("store", "publish", str(folder), "--name", "student", "--kind", "model")
    assert "pytorch_model.bin: format: pickle-based weights are refused" in line
    assert ok("store", "list", "student").count("student@") == 1
