"""The plugin switch, its guards, and its installation through vLLM's entry point group."""

from __future__ import annotations

import logging
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import vllm
from vllm.lora.ops import torch_ops as vllm_ops
from vllm.lora.punica_wrapper import punica_cpu
from vllm.platforms import current_platform

import gateway.fast_lora as fast_lora
from gateway.fast_lora import ops


@pytest.fixture
def stock_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """punica_cpu with vLLM's own ops, restored after the test whatever `register` did."""
    for name in fast_lora.OP_NAMES:
        monkeypatch.setattr(punica_cpu, name, getattr(vllm_ops, name))
    monkeypatch.delenv(fast_lora.ENV_VAR, raising=False)


def _installed() -> dict[str, object]:
    return {name: getattr(punica_cpu, name) for name in fast_lora.OP_NAMES}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(None, True), ("", True), ("1", True), ("true", True), (" ON ", True), ("yes", True)],
        *[("0", False), ("false", False), ("Off", False), ("no", False)],
    ],
)
def test_switch_values(value: str | None, expected: bool) -> None:
    env = {} if value is None else {fast_lora.ENV_VAR: value}
    assert fast_lora.enabled(env) is expected


def test_unreadable_switch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"TUNEGATE_GATEWAY_FAST_LORA='maybe' is not a boolean"):
        fast_lora.enabled({fast_lora.ENV_VAR: "maybe"})


def test_register_installs_the_grouped_ops_once(
    stock_ops: None, caplog: pytest.LogCaptureFixture
) -> None:
    assert not fast_lora.is_active()
    with caplog.at_level(logging.INFO, logger="vllm.tunegate.fast_lora"):
        fast_lora.register()
        fast_lora.register()  # vLLM may load plugins more than once per process

    assert _installed() == {name: getattr(ops, name) for name in fast_lora.OP_NAMES}
    assert fast_lora.is_active()
    # Only the names punica_cpu uses are swapped: vLLM's own module keeps its originals.
    assert vllm_ops.bgmv_shrink is not ops.bgmv_shrink
    assert sum("fast LoRA ops active" in r.message for r in caplog.records) == 1


def test_switched_off_leaves_vllm_ops(stock_ops: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fast_lora.ENV_VAR, "0")
    fast_lora.register()
    assert _installed() == {name: getattr(vllm_ops, name) for name in fast_lora.OP_NAMES}


def test_other_vllm_version_warns_and_leaves_vllm_ops(
    stock_ops: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(vllm, "__version__", "0.33.0")
    with caplog.at_level(logging.WARNING, logger="vllm.tunegate.fast_lora"):
        fast_lora.register()

    assert not fast_lora.is_active()
    assert any(
        r.levelno == logging.WARNING and "0.32.0" in r.message and "0.33.0" in r.message
        for r in caplog.records
    )


def test_other_platform_leaves_vllm_ops(stock_ops: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(type(current_platform), "is_cpu", lambda self: False)
    fast_lora.register()
    assert not fast_lora.is_active()


def test_entry_point_is_registered_with_vllm() -> None:
    """`pip install -e .` registers it; vLLM loads the group in each of its processes."""
    found = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert found.get("tunegate_fast_lora") == "gateway.fast_lora:register"


def test_import_is_light() -> None:
    """vLLM imports the plugin in every process: no torch, vLLM or server modules with it."""
    code = (
        "import sys, gateway.fast_lora; "
        "heavy = ('torch', 'vllm', 'transformers', 'litestar', 'uvicorn', 'opentelemetry'); "
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
