"""`tunegate model` and `tunegate config` as a user runs them: subprocesses of the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from adapters_store.bases import MANIFEST, BaseModel


def tunegate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunegate", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_model_default_prints_registered_folder(home: Path, default_model: BaseModel) -> None:
    result = tunegate("model", "default")
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert folder == home / "models" / "smollm2-135m-instruct"
    for name in ("config.json", "model.safetensors", "tokenizer.json", MANIFEST):
        assert (folder / name).is_file()
    assert (
        "chat_template" in (folder / "tokenizer_config.json").read_text()
        or (folder / "chat_template.jinja").is_file()
    )

    listed = tunegate("model", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert rows["smollm2-135m-instruct"]["default"] is True
    assert rows["smollm2-135m-instruct"]["architecture"] == "LlamaForCausalLM"
    assert tunegate("model", "verify", "smollm2-135m-instruct").returncode == 0


def test_corrupt_default_model_is_rebuilt_not_used(
    tmp_path: Path, default_model: BaseModel
) -> None:
    home = tmp_path / "home"
    shutil.copytree(default_model.path, home / "models" / default_model.id)
    weights = home / "models" / default_model.id / "model.safetensors"
    with weights.open("r+b") as f:
        f.seek(weights.stat().st_size // 2)
        f.write(b"\x00corrupt\x00")
    env = {"TUNEGATE_HOME": str(home)}

    bad = tunegate("model", "verify", default_model.id, env=env)
    assert bad.returncode == 1
    assert "model.safetensors: sha256 differs" in bad.stdout

    rebuilt = tunegate("model", "default", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert tunegate("model", "verify", default_model.id, env=env).returncode == 0
    manifest = json.loads((home / "models" / default_model.id / MANIFEST).read_text())
    assert manifest["files"] == default_model.files, "conversion is deterministic"


def test_config_shows_layers(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("store:\n  max_lora_rank: 16\n")
    out = tunegate("--config", str(cfg), "config", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["home"] == str(home.resolve())
    assert data["store.max_lora_rank"] == 16

    out = tunegate("--config", str(cfg), "config", env={"TUNEGATE_STORE_MAX_LORA_RANK": "8"})
    assert "store.max_lora_rank = 8    # env:TUNEGATE_STORE_MAX_LORA_RANK" in out.stdout

    bad = tunegate("--config", str(tmp_path / "missing.yaml"), "config")
    assert bad.returncode == 1
    assert "config file not found" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_unknown_base_is_one_clear_line(home: Path) -> None:
    out = tunegate("model", "verify", "no-such-model")
    assert out.returncode == 1
    assert out.stderr.strip().startswith("tunegate model: error: unknown base model")
    assert "Traceback" not in out.stderr
