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
    [{"eval_batch_size": 0}, {"few_shot_k": 33}, {"vllm_kv_cache_gib": 0}],
)
def test_out_of_range(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="tuner\\."):
        TunerConfig(**kwargs)  # type: ignore[arg-type]
