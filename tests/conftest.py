"""Shared fixtures.

Base models are built once (by `make setup`, else by the first test that needs them) in the
real tunegate home and then linked read-only into each test's own temporary home, so tests
never touch the user's catalog and never pay for a rebuild. The vLLM engine is expensive
(~35 s to start on the CPU): one per test session, created by the first test that asks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters_store.bases import MANIFEST, BaseModel
from tunegate.config import load_settings
from tuner.base_models import ensure_default, ensure_tiny

# vLLM on the CPU sizes its KV cache from this (GiB); without it start-up fails on memory.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


@pytest.fixture(scope="session")
def shared_models_dir() -> Path:
    models = load_settings().models_dir
    ensure_default(models)
    ensure_tiny(models)
    return models


@pytest.fixture(scope="session")
def default_model(shared_models_dir: Path) -> BaseModel:
    return ensure_default(shared_models_dir, verify=False)


@pytest.fixture(scope="session")
def tiny_model(shared_models_dir: Path) -> BaseModel:
    return ensure_tiny(shared_models_dir)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_models_dir: Path) -> Path:
    """A fresh TUNEGATE_HOME whose models/ links to the shared, already built base models."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    for child in shared_models_dir.iterdir():
        if (child / MANIFEST).is_file():
            (home / "models" / child.name).symlink_to(child, target_is_directory=True)
    monkeypatch.setenv("TUNEGATE_HOME", str(home))
    monkeypatch.delenv("TUNEGATE_CONFIG", raising=False)
    return home


@pytest.fixture(scope="session")
def vllm_engine(default_model: BaseModel) -> Iterator[Any]:
    """One offline vLLM engine on the default model, LoRA enabled, for the whole session."""
    from vllm import LLM

    from adapters_store.hardware import engine_dtype

    llm = LLM(
        str(default_model.path),
        dtype=engine_dtype("auto"),  # what the gateway and the tuner run in on this host
        max_model_len=2048,
        enable_lora=True,
        max_lora_rank=64,
        max_loras=4,
        seed=0,
    )
    yield llm
    del llm
