"""The plugin switch, its guards, and its installation through vLLM's entry point group."""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

import pytest
import torch
import vllm
from vllm.lora.layers import LoRAMapping
from vllm.lora.model_manager import LoRAModelManager
from vllm.lora.ops import torch_ops as vllm_ops
from vllm.lora.punica_wrapper import punica_cpu
from vllm.platforms import current_platform

import gateway.fast_lora as fast_lora
from gateway.fast_lora import linear, ops

_HOOKS = ("_tunegate_step_hook", "_tunegate_fused", "_tunegate_forget")


def _unhooked(method: Any) -> Any:
    """vLLM's own method under the plugin's wrappers (each keeps it as `__wrapped__`)."""
    return inspect.unwrap(method, stop=lambda f: not any(getattr(f, h, False) for h in _HOOKS))


@pytest.fixture
def stock_ops(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """punica_cpu with vLLM's own ops and methods, restored after the test whatever
    `register` did. Unwrapped, not just saved: anything earlier in this process that made a
    vLLM engine config (the e2e distillation test does) has run the plugin already."""
    for name in fast_lora.OP_NAMES:
        monkeypatch.setattr(punica_cpu, name, getattr(vllm_ops, name))
    wrapper = punica_cpu.PunicaWrapperCPU
    monkeypatch.setattr(wrapper, "update_metadata", _unhooked(wrapper.update_metadata))
    monkeypatch.setattr(wrapper, "add_lora_linear", _unhooked(wrapper.add_lora_linear))
    monkeypatch.setattr(LoRAModelManager, "_add_adapter", _unhooked(LoRAModelManager._add_adapter))
    monkeypatch.delenv(fast_lora.ENV_VAR, raising=False)
    ops._step.reset()
    yield
    # A hooked step leaves the ops memoising by address: later tests call them directly.
    ops._step.reset()


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


@pytest.mark.parametrize(("value", "expected"), [(None, 2 << 30), (" 64 ", 64 << 20), ("0", 0)])
def test_cache_budget_values(value: str | None, expected: int) -> None:
    env = {} if value is None else {fast_lora.CACHE_ENV_VAR: value}
    assert fast_lora.cache_budget(env) == expected


@pytest.mark.parametrize("value", ["1.5", "-1", "lots"])
def test_unreadable_cache_budget_is_a_clear_error(value: str) -> None:
    with pytest.raises(ValueError, match=r"TUNEGATE_GATEWAY_FAST_LORA_CACHE_MIB=.*MiB"):
        fast_lora.cache_budget({fast_lora.CACHE_ENV_VAR: value})


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
    # ...and its linear modules run fused, wrapping vLLM's method once.
    fused = punica_cpu.PunicaWrapperCPU.add_lora_linear
    assert fused._tunegate_fused  # type: ignore[attr-defined]
    assert not getattr(fused._tunegate_original, "_tunegate_fused", False)  # type: ignore[attr-defined]
    # ...and it hears of each adapter registration (its weights may be new).
    assert LoRAModelManager._add_adapter._tunegate_forget  # type: ignore[attr-defined]


class _Slots:
    """Stacked q/k/v-shaped LoRA weights as vLLM keeps them: allocated once, an adapter's
    weights written in place (zero-padded to the slots' rank) when it enters a slot."""

    SLOTS, RANK, WIDTH, SLICES = 4, 8, 16, (16, 8, 8)

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        n, r, w = self.SLOTS, self.RANK, self.WIDTH
        self.dtype = dtype
        self.lora_a = tuple(torch.zeros(n, 1, r, w, dtype=dtype) for _ in self.SLICES)
        self.lora_b = tuple(torch.zeros(n, 1, size, r, dtype=dtype) for size in self.SLICES)
        # The last slot stays empty, so vLLM's "-1 is the last slot" means "no adapter".
        self.layout: list[int | None] = [None] * n

    def load(self, slot: int, adapter_id: int, rank: int, skip: int | None = None) -> None:
        """`skip`: a slice the adapter leaves alone (all zeros, as vLLM stores a packed
        module's untargeted part, e.g. an adapter on q and v only)."""
        gen = torch.Generator().manual_seed(adapter_id)
        for i, (a, b) in enumerate(zip(self.lora_a, self.lora_b, strict=True)):
            a[slot] = 0
            b[slot] = 0
            if i == skip:
                continue
            a[slot, :, :rank] = torch.randn(1, rank, self.WIDTH, generator=gen).to(self.dtype)
            b[slot, :, :, :rank] = torch.randn(1, b.shape[2], rank, generator=gen).to(self.dtype)
        self.layout[slot] = adapter_id

    def step(
        self, wrapper: punica_cpu.PunicaWrapperCPU, mapping: LoRAMapping, seed: int
    ) -> torch.Tensor:
        """One module through the wrapper, as vLLM's LoRA layers call it."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(len(mapping.index_mapping), self.WIDTH, generator=gen).to(self.dtype)
        # The base layer's output, which the LoRA adds to (one spare column stays alone).
        out = torch.randn(x.shape[0], sum(self.SLICES) + 1, generator=gen).to(self.dtype)
        wrapper.update_metadata(mapping, list(self.layout), self.SLOTS, 1000)
        wrapper.add_lora_linear(out, x, self.lora_a, self.lora_b, 0.5, self.SLICES)
        return out


def _run(
    wrapper: punica_cpu.PunicaWrapperCPU, dtype: torch.dtype = torch.float32
) -> list[torch.Tensor]:
    """Steps with other adapters and batch sizes over the same wrapper buffers; adapter 3
    (full rank) takes over the slot of adapter 1 (rank 3, so its padding gets skipped).
    Batches: one adapter, prefill segments, tokens interleaved over adapters and none."""
    slots = _Slots(dtype)
    slots.load(0, adapter_id=1, rank=3)
    slots.load(1, adapter_id=2, rank=8)
    outs = [
        slots.step(wrapper, LoRAMapping((1, 1, 1, 1), (1,), is_prefill=True), 0),
        slots.step(wrapper, LoRAMapping((2, 2, 2, 2), (2,), is_prefill=True), 1),
        slots.step(wrapper, LoRAMapping((1, 2, 0, 2, 1), (1, 2, 0, 2, 1), is_prefill=True), 2),
    ]
    slots.load(0, adapter_id=3, rank=8)
    outs += [
        slots.step(wrapper, LoRAMapping((3, 3, 3, 3), (3,), is_prefill=True), 3),
        slots.step(wrapper, LoRAMapping((2, 3, 3), (2, 3), is_prefill=True), 4),
        slots.step(wrapper, LoRAMapping((3, 3, 2, 2, 2, 0), (3, 2, 0), is_prefill=True), 5),
        slots.step(wrapper, LoRAMapping((0, 2, 0, 3, 3, 2), (0, 2, 0, 3, 3, 2)), 6),
        slots.step(wrapper, LoRAMapping((0, 0), (0, 0)), 7),
    ]
    # Prefill-sized batches (from linear._SMALL_ROWS rows of a slot on, each slot's span runs
    # on its own): contiguous slots, then requests alternating between slots (rows
    # gathered), with an adapter that leaves one slice out.
    outs += [
        slots.step(wrapper, _prefill((3, 70), (2, 66), (0, 5)), 8),
        slots.step(wrapper, _prefill((3, 40), (2, 40), (3, 40), (0, 3), (2, 40)), 9),
    ]
    slots.load(1, adapter_id=4, rank=6, skip=1)
    outs += [
        slots.step(wrapper, _prefill((4, 65), (3, 64)), 10),
        slots.step(wrapper, _prefill((4, 33), (3, 20), (4, 33), (3, 50)), 11),
    ]
    # Decode over interleaved adapters of one rank runs as one batched matmul over the slots
    # (linear._batched), with stacked weights kept while the layout stays: a new adapter of
    # the same rank in slot 1 must not reuse them; slots of unequal rows are padded.
    slots.load(1, adapter_id=5, rank=8)
    outs += [
        slots.step(wrapper, LoRAMapping((5, 3, 0, 3, 5), (5, 3, 0, 3, 5)), 12),
        slots.step(wrapper, LoRAMapping((5, 3, 3, 5, 3), (5, 3, 3, 5, 3)), 13),
    ]
    # One request per adapter (rows in slot order, no gather) also runs batched; beside a
    # prefill chunk, the decodes run batched and the chunk on its own, in place or gathered;
    # slots of unequal rank run one by one.
    slots.load(2, adapter_id=6, rank=8)
    outs += [
        slots.step(wrapper, LoRAMapping((5, 3, 6), (5, 3, 6)), 14),
        slots.step(wrapper, _prefill((3, 40), (5, 1), (6, 1)), 15),
        slots.step(wrapper, _prefill((3, 20), (5, 1), (3, 20), (6, 1), (0, 2)), 16),
    ]
    slots.load(2, adapter_id=7, rank=4)
    outs += [slots.step(wrapper, LoRAMapping((5, 7, 3), (5, 7, 3)), 17)]
    # Batched decodes over slots whose adapters leave out a slice: the same one (slice 1),
    # then different ones (slice 1 vs slice 2), so the bank's rows hold zeros for them.
    slots.load(2, adapter_id=8, rank=8, skip=1)
    slots.load(0, adapter_id=9, rank=8, skip=1)
    outs += [slots.step(wrapper, LoRAMapping((9, 8, 0, 8, 9), (9, 8, 0, 8, 9)), 18)]
    slots.load(0, adapter_id=10, rank=8, skip=2)
    outs += [slots.step(wrapper, LoRAMapping((10, 8, 10), (10, 8, 10)), 19)]
    return outs


def _prefill(*requests: tuple[int, int]) -> LoRAMapping:
    """A prefill batch of (adapter id, tokens) requests (adapter 0: none)."""
    index = tuple(adapter for adapter, tokens in requests for _ in range(tokens))
    return LoRAMapping(index, tuple(adapter for adapter, _ in requests), is_prefill=True)


def test_step_memo_follows_each_new_mapping_and_slot_layout(
    stock_ops: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step's result is vLLM's: nothing memoised outlives its step's index buffers,
    nor the adapter its slot's weights belong to. The grouped ops' own memo, so the
    wrapper's unfused `add_lora_linear` (what other callers of the ops get)."""
    expected = _run(punica_cpu.PunicaWrapperCPU(256, 16, "cpu"))
    fast_lora.register()
    wrapper = punica_cpu.PunicaWrapperCPU
    monkeypatch.setattr(wrapper, "add_lora_linear", wrapper.add_lora_linear._tunegate_original)  # type: ignore[attr-defined]
    got = _run(punica_cpu.PunicaWrapperCPU(256, 16, "cpu"))
    assert ops._step.scoped
    for step, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(
            g, e, rtol=1e-5, atol=1e-5, msg=lambda m, s=step: f"step {s}: {m}"
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_modules_match_vllm(
    stock_ops: None, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """The fused path gives vLLM's results (its float32 shrink buffer and the rounding of
    reduced dtypes included), and inside a hooked step it never falls back to the wrapper."""
    expected = _run(punica_cpu.PunicaWrapperCPU(256, 16, "cpu"), dtype)
    fast_lora.register()
    covered: list[bool] = []
    fused = linear._fused

    def spy(*args: Any) -> bool:
        covered.append(fused(*args))
        return covered[-1]

    monkeypatch.setattr(linear, "_fused", spy)
    got = _run(punica_cpu.PunicaWrapperCPU(256, 16, "cpu"), dtype)
    assert covered == [True] * len(got)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for step, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(
            g, e, rtol=tolerance, atol=tolerance, msg=lambda m, s=step: f"step {s}: {m}"
        )


def _decode_run(wrapper: punica_cpu.PunicaWrapperCPU) -> list[torch.Tensor]:
    """Decode steps over two interleaved adapters of one rank (linear._batched's case), the
    stacked weights built first, then one slot taking a new adapter of the same rank."""
    slots = _Slots()
    slots.load(0, adapter_id=1, rank=8)
    slots.load(1, adapter_id=2, rank=8)
    outs = [slots.step(wrapper, LoRAMapping((1, 2, 1, 2), (1, 2, 1, 2)), 0)]
    slots.load(1, adapter_id=5, rank=8)
    outs += [
        slots.step(wrapper, LoRAMapping((5, 1, 0, 1, 5), (5, 1, 0, 1, 5)), 1),
        slots.step(wrapper, LoRAMapping((5, 1, 1, 5, 1), (5, 1, 1, 5, 1)), 2),
    ]
    return outs


def test_batched_decode_follows_slot_changes(stock_ops: None) -> None:
    """The stacked weights of the batched decode path never outlive a slot's adapter."""
    expected = _decode_run(punica_cpu.PunicaWrapperCPU(256, 16, "cpu"))
    fast_lora.register()
    got = _decode_run(punica_cpu.PunicaWrapperCPU(256, 16, "cpu"))
    for step, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(
            g, e, rtol=1e-5, atol=1e-5, msg=lambda m, s=step: f"step {s}: {m}"
        )


class _EightSlots(_Slots):
    SLOTS = 8


def _bank_run(wrapper: punica_cpu.PunicaWrapperCPU, dtype: torch.dtype) -> list[torch.Tensor]:
    """Decode steps through linear's bank of every slot's weights: built at rank 3, widened
    when a rank-8 adapter joins, over a few of eight slots (their weights copied out) and
    over most (all eight read in place, the empty ones' results dropped), with rows of no
    adapter, slots of unequal rows, and an adapter replacing another in its slot."""
    slots = _EightSlots(dtype)
    slots.load(0, adapter_id=1, rank=3)
    slots.load(1, adapter_id=2, rank=3)
    outs = [slots.step(wrapper, LoRAMapping((1, 2, 1, 2), (1, 2, 1, 2)), 0)]
    slots.load(2, adapter_id=3, rank=8)
    outs += [
        slots.step(wrapper, LoRAMapping((1, 3, 2), (1, 3, 2)), 1),
        slots.step(wrapper, LoRAMapping((3, 0, 1, 3), (3, 0, 1, 3)), 2),
    ]
    slots.load(3, adapter_id=4, rank=5, skip=2)
    slots.load(4, adapter_id=5, rank=8)
    outs += [
        slots.step(wrapper, LoRAMapping((5, 4, 3, 2, 1), (5, 4, 3, 2, 1)), 3),
        slots.step(wrapper, LoRAMapping((5, 4, 3, 0, 1, 4), (5, 4, 3, 0, 1, 4)), 4),
    ]
    slots.load(1, adapter_id=6, rank=8)
    outs += [slots.step(wrapper, LoRAMapping((6, 5, 4, 3, 1), (6, 5, 4, 3, 1)), 5)]
    slots.load(2, adapter_id=7, rank=3)  # narrower than the one it replaces
    outs += [slots.step(wrapper, LoRAMapping((6, 5, 4, 7, 1), (6, 5, 4, 7, 1)), 6)]
    return outs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_decode_reads_a_bank_of_every_slot(
    stock_ops: None, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """The bank gives vLLM's results whatever slots a batch uses, and is rewritten only
    for the slot an adapter enters."""
    expected = _bank_run(punica_cpu.PunicaWrapperCPU(256, 16, "cpu"), dtype)
    fast_lora.register()
    grids: list[int | None] = []
    batched = linear._batched

    def spy(*args: Any) -> Any:
        found = batched(*args)
        grids.append(None if found is None or found.grid is None else found.grid.shape[0])
        return found

    monkeypatch.setattr(linear, "_batched", spy)
    got = _bank_run(punica_cpu.PunicaWrapperCPU(256, 16, "cpu"), dtype)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for step, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(
            g, e, rtol=tolerance, atol=tolerance, msg=lambda m, s=step: f"step {s}: {m}"
        )
    # Two or three of eight slots: a grid of those; four or more: every slot in place.
    assert grids == [2, 3, 2, None, None, None, None]
    (bank,) = [v for k, v in ops._step._kept.items() if k[0] == "bank"]
    assert isinstance(bank, linear._Bank)
    assert [b.shape[1] for _, _, b in bank.slices] == [8, 8, 8]


def test_slot_versions_change_exactly_when_a_slot_may_hold_other_weights() -> None:
    """What the banks rely on: a slot's version moves when its adapter changes, when vLLM
    registers its adapter again, and for every slot when the layout is unknown or resized;
    never for the other slots or a repeated layout."""
    memo = ops._StepMemo()
    memo.new_step((1, 2, None))
    before = [memo.slot_version(s) for s in range(3)]
    memo.new_step((1, 2, None))
    assert [memo.slot_version(s) for s in range(3)] == before
    memo.new_step((1, 3, None))
    after = [memo.slot_version(s) for s in range(3)]
    assert after[0] == before[0] and after[2] == before[2] and after[1] != before[1]
    memo.forget_adapter(1)
    again = [memo.slot_version(s) for s in range(3)]
    assert again[0] != after[0] and again[1:] == after[1:]
    for layout in (None, (1, 3, None, None)):
        seen = [memo.slot_version(s) for s in range(3)]
        memo.new_step(layout)
        assert all(memo.slot_version(s) != v for s, v in enumerate(seen))
    seen = [memo.slot_version(s) for s in range(3)]
    memo.reset()
    assert all(memo.slot_version(s) != v for s, v in enumerate(seen))


def _moving_run(wrapper: punica_cpu.PunicaWrapperCPU, forget: bool) -> list[torch.Tensor]:
    """More adapters than slots: adapters leave and come back in other slots, and id 2 is
    registered again with other weights (`forget`: the plugin's registration hook ran)."""
    slots = _Slots()
    outs = []
    for step, (first, second) in enumerate([(1, 2), (3, 1), (2, 3), (1, 2)]):
        slots.load(0, adapter_id=first, rank=8)
        slots.load(1, adapter_id=second, rank=8)
        ids = (first, second, first, 0, second)
        outs.append(slots.step(wrapper, LoRAMapping(ids, ids), step))
    # Id 2 again, now other weights (vLLM dropped it from its cache and loaded a new file).
    slots.load(0, adapter_id=2, rank=5)
    slots.load(1, adapter_id=1, rank=8)
    if forget:
        LoRAModelManager._add_adapter(_FakeManager(), _FakeLoRA(2))  # type: ignore[arg-type]
    outs.append(slots.step(wrapper, LoRAMapping((2, 1, 2), (2, 1, 2)), 9))
    # ...and once more into the same slot, so the layout stays as it was.
    slots.load(0, adapter_id=2, rank=3)
    if forget:
        LoRAModelManager._add_adapter(_FakeManager(), _FakeLoRA(2))  # type: ignore[arg-type]
    outs.append(slots.step(wrapper, LoRAMapping((2, 1, 2), (2, 1, 2)), 10))
    return outs


class _FakeManager:
    """What LoRAModelManager._add_adapter touches, for calling the hooked method alone."""

    def _validate_moe_lora_format(self, lora: object) -> None: ...

    def _create_merged_loras_inplace(self, lora: object) -> None: ...

    def __init__(self) -> None:
        self._registered_adapters: dict[int, object] = {}


class _FakeLoRA:
    def __init__(self, id: int) -> None:
        self.id = id


def test_adapters_moving_between_slots_keep_their_fused_weights(
    stock_ops: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An adapter coming back, in another slot, reuses what was built for its weights (no
    second rank check); vLLM registering its id again makes the plugin build afresh."""
    expected = _moving_run(punica_cpu.PunicaWrapperCPU(256, 16, "cpu"), forget=False)
    fast_lora.register()
    checks: list[int] = []
    trailing_rank = ops._trailing_rank

    def spy(w: torch.Tensor, shrink: bool) -> int:
        checks.append(1)
        return trailing_rank(w, shrink)

    monkeypatch.setattr(ops, "_trailing_rank", spy)
    got = _moving_run(punica_cpu.PunicaWrapperCPU(256, 16, "cpu"), forget=True)
    for step, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(
            g, e, rtol=1e-5, atol=1e-5, msg=lambda m, s=step: f"step {s}: {m}"
        )
    # Two checks per slice (lora_a and lora_b) per adapter build: ids 1, 2, 3, then 2 anew
    # twice.
    assert len(checks) == 5 * 2 * len(_Slots.SLICES)


def test_adapter_memo_stays_within_its_budget(stock_ops: None) -> None:
    fast_lora.register()
    ops._step.adapter_budget = 1  # every adapter but the latest is evicted at once
    got = _moving_run(punica_cpu.PunicaWrapperCPU(256, 16, "cpu"), forget=True)
    assert len(ops._step._by_adapter) == 1 and ops._step._adapter_bytes > 0
    # As a new engine would start: the run reuses adapter ids with other weights without
    # registering them again, and its tensors may get the addresses the memo's keys hold.
    ops._step.reset()
    ops._step.adapter_budget = 1 << 30
    expected = _moving_run(punica_cpu.PunicaWrapperCPU(256, 16, "cpu"), forget=True)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_adapter_memo_keeps_each_slice_once(stock_ops: None) -> None:
    """What an adapter costs the memo: its fused shrink matrix and each slice's expand
    matrix at its live rank, in float32, and nothing else (a block-diagonal copy of the
    slices doubled it, and 64 adapters of the default model no longer fit the budget)."""
    fast_lora.register()
    slots = _Slots(torch.bfloat16)
    slots.load(0, adapter_id=1, rank=5)
    slots.load(1, adapter_id=2, rank=3, skip=2)
    wrapper = punica_cpu.PunicaWrapperCPU(256, 16, "cpu")
    # A prefill (each slot on its own) and a decode (the bank) over both adapters.
    slots.step(wrapper, _prefill((1, 70), (2, 3)), 0)
    slots.step(wrapper, LoRAMapping((1, 2, 1, 2), (1, 2, 1, 2)), 1)
    width, sizes = _Slots.WIDTH, _Slots.SLICES
    expected = {
        1: 4 * (width * 5 * 3 + 5 * sum(sizes)),
        2: 4 * (width * 3 * 2 + 3 * (sizes[0] + sizes[1])),
    }
    assert {k: held for k, (_, held) in ops._step._by_adapter.items()} == expected
    assert ops._step._adapter_bytes == sum(expected.values())


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


@pytest.mark.parametrize("plugin", ["gateway.fast_lora", "gateway.shm_polling"])
def test_import_is_light(plugin: str) -> None:
    """vLLM imports the plugins in every process: no torch, vLLM or server modules with them."""
    code = (
        f"import sys, {plugin}; "
        "heavy = ('torch', 'vllm', 'transformers', 'litestar', 'uvicorn', 'opentelemetry'); "
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
