"""Canary, promotion, rollback and key changes through the CLI, read back by `tunegate audit`."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

from adapters_store.bases import BaseModel
from adapters_store.testing import write_lora
from tests.e2e.test_cli_store import ok, refused


def test_canary_promote_rollback_and_keys_are_audited(
    home: Path, tmp_path: Path, tiny_model: BaseModel
) -> None:
    adapter = write_lora(tmp_path / "adapter", tiny_model, r=4)
    for version in (1, 2):
        assert ok("store", "publish", str(adapter), "--name", "telecom") == f"telecom@{version}\n"
    ok("store", "alias", "telecom@1", "prod")
    assert ok("store", "alias", "telecom@2", "prod", "--canary", "50").strip() == (
        "telecom@prod -> telecom@1, canary telecom@2 for 50% of callers"
    )
    shown = ok("store", "show", "telecom@prod").splitlines()
    assert shown[0].startswith("telecom@1 ")  # the alias keeps its stable target
    assert "canary:     telecom@2 (50% of telecom@prod's callers)" in shown
    assert ok("store", "promote", "telecom").strip() == "telecom@prod -> telecom@2"
    assert ok("store", "rollback", "telecom").strip() == "telecom@prod -> telecom@1"
    ok("keys", "create", "acme", "--adapters", "telecom")
    ok("keys", "revoke", "acme")

    entries = json.loads(ok("audit", "--json"))
    assert [(e["action"], e["subject"]) for e in entries] == [
        ("publish", "telecom@1"),
        ("publish", "telecom@2"),
        ("alias", "telecom@prod"),
        ("canary", "telecom@prod"),
        ("promote", "telecom@prod"),
        ("rollback", "telecom@prod"),
        ("key.create", "key:acme"),
        ("key.revoke", "key:acme"),
    ]
    assert {e["actor"] for e in entries} == {getpass.getuser()}
    assert entries[4]["before"] == {"version": 1, "canary": 2, "percent": 50}
    assert entries[4]["after"] == {"version": 2}
    assert entries[6]["after"]["adapters"] == ["telecom"] and entries[6]["before"] is None

    text = ok("audit", "--ref", "telecom@prod").splitlines()
    assert text[0].split() == ["TIME", "ACTOR", "ACTION", "SUBJECT", "BEFORE", "AFTER"]
    assert len(text) == 1 + 6  # the key entries are not about `telecom`
    assert text[-1].split()[2:] == ["rollback", "telecom@prod", "@2", "@1"]
    assert "invalid name" in refused("audit", "--ref", "../x")
