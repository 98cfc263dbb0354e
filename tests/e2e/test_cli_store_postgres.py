"""`tunegate store` on a PostgreSQL catalog shared by two homes (as two gateways' hosts
would be), set once through the config file and once through TUNEGATE_* variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters_store.bases import BaseModel
from adapters_store.testing import write_lora
from tests.postgres import postgres_url

__all__ = ["postgres_url"]  # the fixture, imported for the tests below


def tunegate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunegate", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
    )


def ok(env: dict[str, str], *args: str) -> str:
    result = tunegate(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_two_homes_share_one_catalog_and_blob_folder(
    home: Path, tmp_path: Path, tiny_model: BaseModel, postgres_url: str
) -> None:
    shared = tmp_path / "shared-store"
    (home / "config.yaml").write_text(
        f"store:\n  catalog_url: '{postgres_url}'\n  path: '{shared}'\n"
    )
    first: dict[str, str] = {}  # TUNEGATE_HOME is the test's home, with its config.yaml
    other = tmp_path / "other-home"
    other.mkdir()
    (other / "models").symlink_to(home / "models")
    second = {
        "TUNEGATE_HOME": str(other),
        "TUNEGATE_STORE_CATALOG_URL": postgres_url,
        "TUNEGATE_STORE_PATH": str(shared),
    }
    adapter = write_lora(tmp_path / "adapter", tiny_model, r=4)

    assert ok(first, "store", "publish", str(adapter), "--name", "telecom") == "telecom@1\n"
    assert ok(second, "store", "publish", str(adapter), "--name", "telecom") == "telecom@2\n"
    ok(second, "store", "alias", "telecom@1", "prod")
    for env in (first, second):
        rows = json.loads(ok(env, "store", "list", "--json"))
        assert [(r["ref"], r["aliases"]) for r in rows] == [
            ("telecom@1", ["prod"]),
            ("telecom@2", []),
        ]
        assert Path(rows[1]["path"]) == shared / "blobs" / "telecom" / "2"
        assert ok(env, "store", "verify") == "ok: 2 versions verified\n"
    # Nothing went to either home's own store, and no SQLite catalog was made anywhere.
    assert not (home / "store").exists() and not (other / "store").exists()
    assert not (shared / "catalog.sqlite3").exists()
    config = ok(second, "config")
    assert "store.catalog_url" in config and "env:TUNEGATE_STORE_CATALOG_URL" in config


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://user:secret@db/tunegate", "store.catalog_url must be a postgresql:// URL"),
        ("postgresql://u@/x?nonsense=1", "store.catalog_url: not a valid PostgreSQL URL"),
        (
            "postgresql://user:secret@/tunegate?host=/nonexistent-tunegate-socket-dir",
            "store.catalog_url: cannot open the PostgreSQL catalog",
        ),
    ],
)
def test_bad_or_unreachable_catalog_url_is_one_line_and_writes_nothing(
    home: Path, tmp_path: Path, tiny_model: BaseModel, url: str, expected: str
) -> None:
    adapter = write_lora(tmp_path / "adapter", tiny_model, r=4)
    result = tunegate(
        {"TUNEGATE_STORE_CATALOG_URL": url}, "store", "publish", str(adapter), "--name", "t"
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "secret" not in result.stderr  # the password is never echoed
    assert not (home / "store").exists()
