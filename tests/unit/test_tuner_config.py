"""The `tuner` section of the settings: defaults, layering, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunegate.config import ConfigError, load_settings
from tuner.config import TunerConfig


def test_defaults_and_env_override(tmp_path: Path) -> None:
    env = {"TUNEGATE_HOME": str(tmp_path)}
    s = load_settings(env=env)
    assert s.tuner == TunerConfig()
    assert s.tuner.eval_backend == "auto"
    s = load_settings(env={**env, "TUNEGATE_TUNER_FEW_SHOT_K": "4"})
    assert s.tuner.few_shot_k == 4
    assert s.sources["tuner.few_shot_k"] == "env:TUNEGATE_TUNER_FEW_SHOT_K"


def test_file_values_are_validated(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tuner:\n  eval_backend: tpu\n")
    with pytest.raises(ConfigError, match=r"tuner\.eval_backend must be one of"):
        load_settings(cfg, env={"TUNEGATE_HOME": str(tmp_path)})
    cfg.write_text("tuner:\n  max_length: 8\n")
    with pytest.raises(ConfigError, match=r"tuner\.max_length"):
        load_settings(cfg, env={"TUNEGATE_HOME": str(tmp_path)})


@pytest.mark.parametrize(
    "kwargs",
    [{"eval_batch_size": 0}, {"few_shot_k": 33}, {"vllm_kv_cache_gib": 0}, {"threads": -1}],
)
def test_out_of_range(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="tuner\\."):
        TunerConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cores", "load", "threads"),
    [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 9.0, 1), (16, 3.2, 13), (1, 0.0, 1)],
)
def test_auto_threads_takes_the_idle_cores(cores: int, load: float, threads: int) -> None:
    from tuner.hardware import auto_threads

    assert auto_threads(cores, load) == threads


def test_configure_threads_sets_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tuner.hardware import configure_threads

    before = torch.get_num_threads()
    said: list[str] = []
    try:
        assert configure_threads(1, said.append) == 1
        assert torch.get_num_threads() == 1
        assert "1 CPU thread" in said[0]
        monkeypatch.setattr("os.getloadavg", lambda: (50.0, 0.0, 0.0))
        assert configure_threads(0, said.append) == 1
        assert "load average 50.0" in said[1]
    finally:
        torch.set_num_threads(before)
