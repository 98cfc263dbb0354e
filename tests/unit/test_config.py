from __future__ import annotations

from pathlib import Path

import pytest

from tunegate.config import ConfigError, as_dict, describe, load_settings


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"TUNEGATE_HOME": str(tmp_path / "home"), **extra}


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(env=_env(tmp_path))
    assert s.home == (tmp_path / "home").resolve()
    assert s.models_dir == s.home / "models"
    assert s.default_base == "smollm2-135m-instruct"
    assert s.store.max_lora_rank == 64
    assert s.sources["store.max_lora_rank"] == "default"


def test_file_overrides_defaults_and_env_overrides_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("default_base: tiny-random-llama\nstore:\n  max_lora_rank: 16\n")
    s = load_settings(cfg, env=_env(tmp_path))
    assert s.store.max_lora_rank == 16
    assert s.default_base == "tiny-random-llama"
    assert s.sources["store.max_lora_rank"] == str(cfg)

    s = load_settings(cfg, env=_env(tmp_path, TUNEGATE_STORE_MAX_LORA_RANK="32"))
    assert s.store.max_lora_rank == 32
    assert s.sources["store.max_lora_rank"] == "env:TUNEGATE_STORE_MAX_LORA_RANK"
    assert s.default_base == "tiny-random-llama"


def test_config_file_found_in_home_and_env_home_wins(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(
        f"home: {tmp_path / 'elsewhere'}\nstore:\n  max_lora_rank: 8\n"
    )
    s = load_settings(env=_env(tmp_path))
    assert s.store.max_lora_rank == 8
    assert s.home == home.resolve()
    assert s.sources["home"] == "env:TUNEGATE_HOME"


def test_tunegate_config_env_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "other.yaml"
    cfg.write_text("store: {max_lora_rank: 4}\n")
    s = load_settings(env=_env(tmp_path, TUNEGATE_CONFIG=str(cfg)))
    assert s.store.max_lora_rank == 4


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("stor:\n  max_lora_rank: 8\n", {}, "unknown setting 'stor'"),
        ("store:\n  rank: 8\n", {}, "unknown setting 'store.rank'"),
        ("store: 3\n", {}, "'store' must be a mapping"),
        ("store:\n  max_lora_rank: lots\n", {}, "store.max_lora_rank: expected int"),
        ("store:\n  max_lora_rank: 0\n", {}, "max_lora_rank must be in 1..512"),
        ("- a list\n", {}, "expected a mapping"),
        ("a: [unclosed\n", {}, "not valid YAML"),
        ("", {"TUNEGATE_STORE_MAX_LORA_RANK": "x"}, "TUNEGATE_STORE_MAX_LORA_RANK"),
    ],
)
def test_bad_config_is_a_clear_error(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_settings(cfg, env=_env(tmp_path, **env))


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml", env=_env(tmp_path))


def test_describe_lists_every_setting_with_doc(tmp_path: Path) -> None:
    s = load_settings(env=_env(tmp_path))
    rows = describe(s)
    names = [r[0] for r in rows]
    assert names == list(as_dict(s))
    assert "home" in names and "store.max_lora_rank" in names
    assert all(doc for _, _, _, doc in rows), "every setting documents itself"


@pytest.mark.parametrize(
    "url",
    ["postgresql://user:s3cret@db:5432/tunegate", "postgresql://user@db/tunegate?password=s3cret"],
)
def test_database_urls_are_checked_and_printed_without_password(url: str) -> None:
    env = {"TUNEGATE_STORE_CATALOG_URL": url, "TUNEGATE_GATEWAY_ACCOUNTING_URL": url}
    shown = as_dict(load_settings(env=env))
    assert "s3cret" not in shown["store.catalog_url"] + shown["gateway.accounting.url"]
    assert shown["store.catalog_url"].startswith("postgresql://user")
    bad = {"TUNEGATE_GATEWAY_ACCOUNTING_URL": "sqlite:///x.db"}
    with pytest.raises(ConfigError, match=r"gateway\.accounting\.url must be a postgresql://"):
        load_settings(env=bad)
