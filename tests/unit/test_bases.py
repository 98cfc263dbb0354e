from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from adapters_store.bases import MANIFEST, BaseRegistry, UnknownBaseError


def _fake_build(calls: list[Path]):
    def build(dest: Path) -> None:
        calls.append(dest)
        (dest / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
        (dest / "model.safetensors").write_bytes(b"weights" * 100)

    return build


def test_ensure_builds_once_and_records_checksums(tmp_path: Path) -> None:
    reg = BaseRegistry(tmp_path)
    calls: list[Path] = []
    first = reg.ensure("m1", _fake_build(calls), source="test")
    second = reg.ensure("m1", _fake_build(calls), source="test")
    assert len(calls) == 1
    assert first == second
    assert first.path == tmp_path / "m1"
    assert first.architecture == "LlamaForCausalLM"
    assert set(first.files) == {"config.json", "model.safetensors"}
    assert first.verify() == []
    assert [b.id for b in reg.list()] == ["m1"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".build")]


def test_corrupt_model_is_detected_and_rebuilt(tmp_path: Path) -> None:
    reg = BaseRegistry(tmp_path)
    calls: list[Path] = []
    model = reg.ensure("m1", _fake_build(calls), source="test")
    (model.path / "model.safetensors").write_bytes(b"tampered")
    assert model.verify() == ["model.safetensors: sha256 differs from the recorded one"]
    rebuilt = reg.ensure("m1", _fake_build(calls), source="test")
    assert len(calls) == 2
    assert rebuilt.verify() == []
    assert (rebuilt.path / "model.safetensors").read_bytes() == b"weights" * 100


def test_missing_file_is_reported(tmp_path: Path) -> None:
    model = BaseRegistry(tmp_path).ensure("m1", _fake_build([]), source="test")
    (model.path / "config.json").unlink()
    assert model.verify() == ["config.json: missing"]


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def broken(dest: Path) -> None:
        (dest / "config.json").write_text("{}")
        raise RuntimeError("boom")

    reg = BaseRegistry(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        reg.ensure("m1", broken, source="test")
    assert reg.list() == []
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("bad", ["../etc", "UPPER", "", "a/b", ".hidden", "x" * 65])
def test_invalid_ids_are_refused(tmp_path: Path, bad: str) -> None:
    reg = BaseRegistry(tmp_path)
    with pytest.raises(ValueError, match="invalid base model id"):
        reg.get(bad)
    with pytest.raises(ValueError, match="invalid base model id"):
        reg.ensure(bad, _fake_build([]), source="test")


def test_unknown_base_names_the_registered_ones(tmp_path: Path) -> None:
    reg = BaseRegistry(tmp_path)
    reg.ensure("m1", _fake_build([]), source="test")
    with pytest.raises(UnknownBaseError, match=r"'m2' \(registered: m1\)"):
        reg.get("m2")


def _build_in_child(models: str, log: str) -> None:
    import time

    def slow(dest: Path) -> None:
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(0.3)
        (dest / "config.json").write_text("{}")

    BaseRegistry(Path(models)).ensure("m1", slow, source="test")


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    models, log = tmp_path / "models", tmp_path / "builds.log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_build_in_child, args=(str(models), str(log))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert log.read_text() == "built\n"
    model = BaseRegistry(models).get("m1")
    assert model.verify() == []
    assert (model.path / MANIFEST).is_file()
