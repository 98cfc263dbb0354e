"""The gateway's settings for tunegate's vLLM plugins reach them through the environment of
the engine processes: a config-file value counts, the environment still wins over the file,
and the gateway's own environment is put back when it stops."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import pytest
from litestar.testing import TestClient

from gateway import fast_lora, shm_polling
from gateway.app import create_app
from gateway.testing import FakeEngine
from tunegate.config import ConfigError, load_settings

VARS = (fast_lora.ENV_VAR, fast_lora.CACHE_ENV_VAR, shm_polling.ENV_VAR)


class _SeesEnv(FakeEngine):
    """Records the plugin variables as an engine process started now would inherit them."""

    seen: ClassVar[dict[str, str | None]] = {}

    async def start(self) -> None:
        _SeesEnv.seen = {var: os.environ.get(var) for var in VARS}
        await super().start()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    _SeesEnv.seen = {}


def _serve_once(config: Path) -> dict[str, str | None]:
    app = create_app(load_settings(config), engine_factory=_SeesEnv, use_store=False)
    with TestClient(app):
        pass
    return _SeesEnv.seen


def test_config_file_values_reach_the_engine_processes(
    home: Path, tmp_path: Path, clean_env: None
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("gateway:\n  fast_lora: false\n  fast_lora_cache_mib: 64\n  shm_poll: off\n")
    assert _serve_once(config) == dict(zip(VARS, ("0", "64", "0"), strict=True))
    assert not any(var in os.environ for var in VARS)

    # The defaults, spelled out for the plugins.
    config.write_text("gateway: {}\n")
    expected = ("1", str(fast_lora.DEFAULT_CACHE_MIB), "1")
    assert _serve_once(config) == dict(zip(VARS, expected, strict=True))


def test_environment_wins_over_the_file_and_is_restored(
    home: Path, tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("gateway:\n  fast_lora_cache_mib: 64\n")
    monkeypatch.setenv(fast_lora.CACHE_ENV_VAR, "128")
    monkeypatch.setenv(shm_polling.ENV_VAR, " Off ")
    assert _serve_once(config) == dict(zip(VARS, ("1", "128", "0"), strict=True))
    assert os.environ[shm_polling.ENV_VAR] == " Off "
    assert fast_lora.ENV_VAR not in os.environ


class _FailsToStart(FakeEngine):
    async def start(self) -> None:
        assert os.environ[fast_lora.ENV_VAR] == "0"
        raise RuntimeError("no engine today")


def test_environment_is_restored_when_the_engine_fails_to_start(
    home: Path, tmp_path: Path, clean_env: None
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("gateway:\n  fast_lora: false\n")
    app = create_app(load_settings(config), engine_factory=_FailsToStart, use_store=False)
    # The test client's task group hands the start-up failure on in an ExceptionGroup.
    with pytest.raises(ExceptionGroup) as failure, TestClient(app):
        pass
    assert failure.group_contains(RuntimeError, match="no engine today")
    assert not any(var in os.environ for var in VARS)


def test_a_negative_cache_budget_is_a_clear_error(tmp_path: Path, clean_env: None) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("gateway:\n  fast_lora_cache_mib: -1\n")
    with pytest.raises(ConfigError, match="fast_lora_cache_mib must be >= 0"):
        load_settings(config, env={"TUNEGATE_HOME": str(tmp_path / "home")})
