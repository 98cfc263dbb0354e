"""The effective configuration: defaults < config file < `TUNEGATE_*` environment variables.

Each package owns the dataclass of its own section (`adapters_store.StoreConfig`, ...); this
module only layers values onto them, so the packages never import the CLI. A setting
`section.key` is `key` under `section:` in the YAML file and `TUNEGATE_SECTION_KEY` in the
environment; top-level settings are `key` and `TUNEGATE_KEY`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adapters_store.config import StoreConfig, default_home, redact_url
from finetune.config import FinetuneConfig
from gateway.config import GatewayConfig
from tuner.config import TunerConfig

__all__ = ["ConfigError", "Settings", "load_settings"]

DEFAULT_BASE_ID = "smollm2-135m-instruct"


class ConfigError(ValueError):
    """A config file or environment variable that cannot be used; the message names it."""


@dataclass
class Settings:
    """Every setting of tunegate, with its default."""

    home: Path = field(
        default_factory=default_home,
        metadata={"doc": "State folder: models/, store/, accounting, runs/ (TUNEGATE_HOME)."},
    )
    default_base: str = field(
        default=DEFAULT_BASE_ID,
        metadata={"doc": "Registered base model used when a command names none."},
    )
    store: StoreConfig = field(default_factory=StoreConfig)
    tuner: TunerConfig = field(default_factory=TunerConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # Where each value came from ("default", the config file's path, or "env:NAME"),
    # keyed by dotted name; printed by `tunegate config`.
    sources: dict[str, str] = field(default_factory=dict, metadata={"internal": True})

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def store_dir(self) -> Path:
        return self.store.path or self.home / "store"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"


def load_settings(
    config_file: str | Path | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the effective settings.

    The config file is `config_file`, else `$TUNEGATE_CONFIG`, else `$TUNEGATE_HOME/config.yaml`
    when it exists. A named file that does not exist is an error; unknown keys are errors.
    """
    env = os.environ if env is None else env
    settings = Settings(home=_home_from(env))
    settings.sources = {name: "default" for name, _ in _walk(settings)}

    path = config_file or env.get("TUNEGATE_CONFIG")
    if path is None and (settings.home / "config.yaml").is_file():
        path = settings.home / "config.yaml"
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        _apply_mapping(settings, data, prefix="", source=str(path), sources=settings.sources)

    for name, _ in list(_walk(settings)):
        var = "TUNEGATE_" + name.replace(".", "_").upper()
        if var in env and name != "home":
            _set(settings, name, env[var], source=f"env:{var}")
    if env.get("TUNEGATE_HOME"):
        settings.home = _home_from(env)
        settings.sources["home"] = "env:TUNEGATE_HOME"
    settings.home = settings.home.expanduser().resolve()
    _revalidate(settings)
    return settings


def as_dict(settings: Settings) -> dict[str, Any]:
    """Plain values keyed by dotted name (paths as strings, database URLs without their
    password), for printing."""
    out: dict[str, Any] = {}
    for name, value in _walk(settings):
        if isinstance(value, str) and value.startswith(("postgresql://", "postgres://")):
            value = redact_url(value)
        out[name] = str(value) if isinstance(value, Path) else value
    return out


def describe(settings: Settings) -> list[tuple[str, Any, str, str]]:
    """(dotted name, value, source, doc) for every setting."""
    docs = dict(_docs(Settings, ""))
    return [
        (name, value, settings.sources.get(name, "default"), docs.get(name, ""))
        for name, value in as_dict(settings).items()
    ]


def _home_from(env: Mapping[str, str]) -> Path:
    if env.get("TUNEGATE_HOME"):
        return Path(env["TUNEGATE_HOME"]).expanduser().resolve()
    return default_home()


def _fields(obj_or_cls: Any) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(obj_or_cls) if not f.metadata.get("internal")]


def _walk(obj: Any, prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    for f in _fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _walk(value, prefix + f.name + ".")
        else:
            yield prefix + f.name, value


def _docs(cls: type, prefix: str) -> typing.Iterator[tuple[str, str]]:
    hints = typing.get_type_hints(cls)
    for f in _fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _docs(typing.cast(type, tp), prefix + f.name + ".")
        else:
            yield prefix + f.name, f.metadata.get("doc", "")


def _apply_mapping(
    obj: Any, data: Mapping[str, Any], prefix: str, source: str, sources: dict[str, str]
) -> None:
    known = {f.name: f for f in _fields(obj)}
    for key, value in data.items():
        name = prefix + str(key)
        if key not in known:
            raise ConfigError(f"{source}: unknown setting {name!r}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {name!r} must be a mapping")
            _apply_mapping(current, value, name + ".", source, sources)
        else:
            _set_field(obj, key, name, value, source)
            sources[name] = source


def _set(settings: Settings, dotted: str, raw: Any, source: str) -> None:
    *parents, leaf = dotted.split(".")
    obj: Any = settings
    for p in parents:
        obj = getattr(obj, p)
    _set_field(obj, leaf, dotted, raw, source)
    settings.sources[dotted] = source


def _set_field(obj: Any, key: str, name: str, raw: Any, source: str) -> None:
    tp = typing.get_type_hints(type(obj))[key]
    try:
        value = _coerce(raw, tp)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {name}: {exc}") from exc
    setattr(obj, key, value)


def _coerce(raw: Any, tp: Any) -> Any:
    """Turn a YAML value or an environment string into the field's declared type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("", "none", "null")):
            return None
        return _coerce(raw, args[0])
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {raw!r}")
    if tp in (int, float):
        if isinstance(raw, bool):
            raise ValueError(f"expected a number, got {raw!r}")
        try:
            return tp(raw)
        except (TypeError, ValueError):
            raise ValueError(f"expected {tp.__name__}, got {raw!r}") from None
    if tp is str:
        return str(raw)
    if tp is Path:
        return Path(str(raw)).expanduser()
    if origin in (list, dict):
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                if origin is list:
                    raw = [part.strip() for part in raw.split(",") if part.strip()]
                else:
                    raise ValueError(f"expected a JSON object, got {raw!r}") from None
        if not isinstance(raw, origin):
            raise ValueError(f"expected a {origin.__name__}, got {raw!r}")
        return raw
    return raw


def _revalidate(obj: Any) -> None:
    """Re-run each section's `__post_init__` checks on the layered values."""
    for f in _fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _revalidate(value)
            post = getattr(value, "__post_init__", None)
            if post is not None:
                try:
                    post()
                except ValueError as exc:
                    raise ConfigError(str(exc)) from exc
