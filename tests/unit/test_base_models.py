"""tuner.base_models: which bases a run needs on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters_store.bases import BaseRegistry
from tuner import base_models
from tuner.base_models import DEFAULT_BASE_ID, TINY_BASE_ID, BuildError, ensure_tiny


def _register_fake_tiny(models_dir: Path) -> None:
    def build(dest: Path) -> None:
        (dest / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
        (dest / "model.safetensors").write_bytes(b"weights")

    BaseRegistry(models_dir).ensure(TINY_BASE_ID, build, source="test")


def test_registered_tiny_model_needs_no_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A home holding only the tiny model (e.g. one copied to a GPU node without the GGUF
    # package): the default is neither built nor read.
    _register_fake_tiny(tmp_path)

    def no_gguf() -> Path:
        raise BuildError("no GGUF here")

    monkeypatch.setattr(base_models, "find_default_gguf", no_gguf)
    tiny = ensure_tiny(tmp_path)
    assert tiny.id == TINY_BASE_ID and tiny.path == tmp_path / TINY_BASE_ID
    assert not (tmp_path / DEFAULT_BASE_ID).exists()


def test_building_tiny_model_still_needs_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_gguf() -> Path:
        raise BuildError("no GGUF here")

    monkeypatch.setattr(base_models, "find_default_gguf", no_gguf)
    with pytest.raises(BuildError, match="no GGUF here"):
        ensure_tiny(tmp_path)
    assert not (tmp_path / TINY_BASE_ID).exists()
