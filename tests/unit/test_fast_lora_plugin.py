"""The plugin switch, its guards, and its installation through vLLM's entry point group."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points

import pytest
import torch
import vllm
from vllm.lora.layers import LoRAMapping
from vllm.lora.ops import torch_ops as vllm_ops
from vllm.lora.punica_wrapper import punica_cpu
from vllm.platforms import current_platform

import gateway.fast_lora as fast_lora
from gateway.fast_lora import ops


@pytest.fixture
def stock_ops(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """punica_cpu with vLLM's own ops, restored after the test whatever `register` did."""
    for name in fast_lora.OP_NAMES:
        monkeypatch.setattr(punica_cpu, name, getattr(vllm_ops, name))
    wrapper = punica_cpu.PunicaWrapperCPU
    monkeypatch.setattr(wrapper, "update_metadata", wrapper.update_metadata)
    monkeypatch.delenv(fast_lora.ENV_VAR, raising=False)
    yield
    # A hooked step leaves the ops memoising by address: later tests call them directly.
    ops._step.scoped = False
    ops._step._memo.clear()


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
    # ...and the wrapper tells the ops about each new step's index buffers, once.
    assert punica_cpu.PunicaWrapperCPU.update_metadata._tunegate_step_hook  # type: ignore[attr-defined]
    assert "_tunegate_step_hook" not in vars(punica_cpu.PunicaWrapperBase.update_metadata)


def _linear_step(
    wrapper: punica_cpu.PunicaWrapperCPU, mapping: LoRAMapping, seed: int
) -> torch.Tensor:
    """One q/k/v-shaped LoRA module through the wrapper, as vLLM's LoRA layers call it."""
    gen = torch.Generator().manual_seed(seed)
    tokens = len(mapping.index_mapping)
    slots, rank, width, slices = 3, 8, 16, (16, 8, 8)
    lora_a = tuple(torch.randn(slots, 1, rank, width, generator=gen) for _ in slices)
    lora_b = tuple(torch.randn(slots, 1, size, rank, generator=gen) for size in slices)
    x = torch.randn(tokens, width, generator=gen)
    out = torch.zeros(tokens, sum(slices))
    # The last slot stays empty, so vLLM's "-1 is the last slot" agrees with "no adapter".
    for weights in (*lora_a, *lora_b):
        weights[-1] = 0
    wrapper.update_metadata(mapping, [1, 2, None], slots, 1000)
    wrapper.add_lora_linear(out, x, lora_a, lora_b, 0.5, slices)
    return out


def test_step_memo_follows_each_new_mapping(stock_ops: None) -> None:
    """The same wrapper buffers, rewritten step after step with other adapters and batch
    sizes: every step's result is vLLM's, so nothing memoised outlives its step."""
    steps = [
        LoRAMapping((1, 1, 1, 1), (1,), is_prefill=True),
        LoRAMapping((2, 2, 2, 2), (2,), is_prefill=True),  # same shape, other adapter
        LoRAMapping((1, 2, 0, 2, 1), (1, 2, 0, 2, 1), is_prefill=True),
        LoRAMapping((2, 1, 1), (2, 1), is_prefill=True),
    ]
    stock = punica_cpu.PunicaWrapperCPU(64, 16, "cpu")
    expected = [_linear_step(stock, m, seed) for seed, m in enumerate(steps)]

    fast_lora.register()
    fast = punica_cpu.PunicaWrapperCPU(64, 16, "cpu")
    for seed, (mapping, want) in enumerate(zip(steps, expected, strict=True)):
        got = _linear_step(fast, mapping, seed)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert ops._step.scoped


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
