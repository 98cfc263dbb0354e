"""The grouped punica ops against vLLM's own torch ops, on random inputs.

vLLM's torch ops read a token with slot -1 from the LAST slot (`weights[-1]`); in the engine
that equals "no adapter" while the last slot is empty. The reference therefore runs vLLM's
op on the weights with one empty slot appended, and the grouped op on the weights as they
are: the two must agree whatever the last real slot holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from vllm.lora.ops import torch_ops as vllm_ops

from gateway.fast_lora import ops

BF16, FP32 = torch.bfloat16, torch.float32


@dataclass(frozen=True)
class Batch:
    """How tokens map to slots: prefill segments (sgmv) or one slot per token (bgmv)."""

    name: str
    segments: tuple[tuple[int, int], ...] = ()  # (slot, length) for sgmv
    tokens: tuple[int, ...] = ()  # slot per token for bgmv

    @property
    def prefill(self) -> bool:
        return bool(self.segments)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.segments) if self.prefill else len(self.tokens)

    @property
    def token_slots(self) -> torch.Tensor:
        if self.prefill:
            return torch.tensor([s for s, n in self.segments for _ in range(n)])
        return torch.tensor(self.tokens)


BATCHES = [
    Batch("prefill one adapter", segments=((1, 37),)),
    Batch("prefill mixed lengths", segments=((0, 5), (2, 41), (-1, 9), (3, 1), (0, 17), (1, 3))),
    Batch("prefill no adapter only", segments=((-1, 23),)),
    Batch("prefill last slot + none", segments=((3, 12), (-1, 7), (3, 4))),
    # Groups of 64+ rows take the path that cuts the rank padding off first.
    Batch("prefill long segments", segments=((1, 40), (-1, 3), (2, 64), (1, 30), (0, 64))),
    Batch("decode one adapter", tokens=(2,) * 8),
    Batch("decode mixed", tokens=(0, 3, -1, 1, 3, 3, 2, -1, 0, 1, 1, -1, 2, 0, 3, 3)),
    Batch("decode no adapter only", tokens=(-1,) * 5),
    Batch("decode single token", tokens=(1,)),
]
SLOTS = 4
# (rank written by shrink, buffer width): vLLM pads every adapter to max_lora_rank.
RANK, MAX_RANK = 8, 16
HIDDEN = 48
# Output layouts of one module: q/k/v slices, a merged gate/up pair, one plain projection.
LAYOUTS = {"qkv": (48, 16, 16), "gate_up": (64, 64), "single": (48,)}
# (inputs/weights dtype, shrink buffer dtype): the engine shrinks bf16 into float32.
DTYPES = [(BF16, FP32), (FP32, FP32), (BF16, BF16)]


Segments = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int, int]
# Either op module (ours or vLLM's): both expose the same six functions.
Impl = Any
Run = Callable[[Impl, torch.Tensor, torch.Tensor], None]


def _segments(batch: Batch) -> Segments:
    lengths = torch.tensor([n for _, n in batch.segments])
    slots = torch.tensor([s for s, _ in batch.segments])
    starts = torch.cumsum(lengths, 0) - lengths
    return starts, lengths, slots, len(lengths), int(lengths.max()), int(lengths.sum())


def _random_weights(
    shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator
) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=FP32).to(dtype)


def _shrunk_buffer(batch: Batch, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """An expand input as shrink leaves it: zero past the rank, except (to cover the
    unpadded case too) for slot 0's tokens, and all zero for slot 2's tokens."""
    buf = torch.randn(batch.num_tokens, MAX_RANK, generator=gen)
    slots = batch.token_slots
    buf[(slots != 0).nonzero().squeeze(1), RANK:] = 0
    buf[(slots == 2).nonzero().squeeze(1)] = 0
    return buf.to(dtype)


def _assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal up to summation order: float32 to its own rounding, bf16 within one step
    (2**-8 relative), which is as close as two correct float32-accumulated results get."""
    if ours.dtype == BF16:
        torch.testing.assert_close(ours, theirs, rtol=2**-8, atol=1e-6)
    else:
        torch.testing.assert_close(ours, theirs)


def _with_empty_slot(w: torch.Tensor) -> torch.Tensor:
    return torch.cat([w, torch.zeros_like(w[:1])])


def _shrink(
    impl: Impl, batch: Batch, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, scaling: float
) -> None:
    if batch.prefill:
        impl.sgmv_shrink(x, w, out, *_segments(batch), scaling)
    else:
        impl.bgmv_shrink(x, w, out, torch.tensor(batch.tokens), scaling)


def _expand_slice(
    impl: Impl,
    batch: Batch,
    x: torch.Tensor,
    w: torch.Tensor,
    out: torch.Tensor,
    offset: int,
    size: int,
    add: bool,
) -> None:
    if batch.prefill:
        impl.sgmv_expand_slice(x, w, out, *_segments(batch), offset, size, add)
    else:
        impl.bgmv_expand_slice(x, w, out, torch.tensor(batch.tokens), offset, size, add)


def _expand(
    impl: Impl, batch: Batch, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, add: bool
) -> None:
    if batch.prefill:
        impl.sgmv_expand(x, w, out, *_segments(batch), add)
    else:
        impl.bgmv_expand(x, w, out, torch.tensor(batch.tokens), add)


def _both(run: Run, w: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the grouped op and vLLM's op (with an empty slot appended) on copies of `out`."""
    ours, theirs = out.clone(), out.clone()
    run(ops, w, ours)
    run(vllm_ops, _with_empty_slot(w), theirs)
    return ours, theirs


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: b.name)
@pytest.mark.parametrize(("dtype", "buffer_dtype"), DTYPES, ids=str)
@pytest.mark.parametrize("scaling", [1.0, 0.5])
def test_shrink_matches_vllm(
    batch: Batch, dtype: torch.dtype, buffer_dtype: torch.dtype, scaling: float
) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch.num_tokens, HIDDEN, generator=gen).to(dtype)
    w = _random_weights((SLOTS, 1, MAX_RANK, HIDDEN), dtype, gen)
    w[:, :, RANK:] = 0  # padded to max rank, as vLLM stores a rank-8 adapter
    w[2] = 0  # an empty slot that tokens still point at
    # A buffer wider than the rank, prefilled with garbage: columns past the rank stay put.
    out = torch.randn(batch.num_tokens, MAX_RANK + 3, generator=gen).to(buffer_dtype)

    ours, theirs = _both(lambda impl, ww, o: _shrink(impl, batch, x, ww, o, scaling), w, out)

    _assert_same(ours, theirs)
    assert torch.equal(ours[:, MAX_RANK:], out[:, MAX_RANK:])


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: b.name)
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize(("dtype", "buffer_dtype"), DTYPES, ids=str)
@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand_slice_matches_vllm(
    batch: Batch, layout: str, dtype: torch.dtype, buffer_dtype: torch.dtype, add_inputs: bool
) -> None:
    gen = torch.Generator().manual_seed(2)
    sizes = LAYOUTS[layout]
    buffers = [_shrunk_buffer(batch, buffer_dtype, gen) for _ in sizes]
    weights = [_random_weights((SLOTS, 1, size, MAX_RANK), dtype, gen) for size in sizes]
    out = torch.randn(batch.num_tokens, sum(sizes) + 5, generator=gen).to(dtype)

    def run(impl, _w, o):
        offset = 2  # like add_expand's offset_start
        for buf, w, size in zip(buffers, weights, sizes, strict=True):
            chosen = w if impl is ops else _with_empty_slot(w)
            _expand_slice(impl, batch, buf, chosen, o, offset, size, add_inputs)
            offset += size

    ours, theirs = _both(run, weights[0], out)

    _assert_same(ours, theirs)
    untouched = [slice(0, 2), slice(2 + sum(sizes), None)]
    for cols in untouched:
        assert torch.equal(ours[:, cols], out[:, cols])


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: b.name)
@pytest.mark.parametrize(("dtype", "buffer_dtype"), DTYPES[:2], ids=str)
@pytest.mark.parametrize("add_inputs", [True, False])
@pytest.mark.parametrize("width", [40, 56], ids=lambda w: f"weights{w}-out48")
def test_expand_matches_vllm(
    batch: Batch, dtype: torch.dtype, buffer_dtype: torch.dtype, add_inputs: bool, width: int
) -> None:
    """Plain expand (embeddings, logits): adapter and model may pad to different widths."""
    gen = torch.Generator().manual_seed(3)
    x = _shrunk_buffer(batch, buffer_dtype, gen)
    w = _random_weights((SLOTS, 1, width, MAX_RANK), dtype, gen)
    out = torch.randn(batch.num_tokens, 48, generator=gen).to(dtype)

    ours, theirs = _both(lambda impl, ww, o: _expand(impl, batch, x, ww, o, add_inputs), w, out)

    _assert_same(ours, theirs)


@pytest.mark.parametrize("dtype", [BF16, FP32], ids=str)
def test_linear_round_trip_matches_vllm_on_engine_shapes(dtype: torch.dtype) -> None:
    """shrink then expand_slice, as `add_lora_linear` chains them, at the default model's
    widths (hidden 576, q/k/v 576/192/192) and a 3-D weight stack."""
    gen = torch.Generator().manual_seed(4)
    batch = Batch("engine", segments=((0, 30), (1, 70), (-1, 9), (2, 20), (0, 33)))
    n, sizes = batch.num_tokens, (576, 192, 192)
    x = torch.randn(n, 576, generator=gen).to(dtype)
    a = [_random_weights((SLOTS, 16, 576), dtype, gen) * 0.05 for _ in sizes]
    b = [_random_weights((SLOTS, size, 16), dtype, gen) * 0.05 for size in sizes]
    y = torch.randn(n, sum(sizes), generator=gen).to(dtype)

    def run(impl, _w, out):
        offset = 0
        for wa, wb, size in zip(a, b, sizes, strict=True):
            pad = (lambda t: t) if impl is ops else _with_empty_slot
            buf = torch.zeros(n, 16, dtype=FP32)
            _shrink(impl, batch, x, pad(wa), buf, 1.0)
            _expand_slice(impl, batch, buf, pad(wb), out, offset, size, True)
            offset += size

    ours, theirs = _both(run, a[0], y)

    _assert_same(ours, theirs)
    assert not torch.equal(ours, y), "the adapters must change the output"


def test_no_adapter_tokens_ignore_a_full_last_slot() -> None:
    """The one deliberate difference: vLLM's torch ops apply the last slot to -1 tokens."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, HIDDEN, generator=gen)
    w = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=gen)
    indices = torch.tensor([0, -1, 3, -1, 1, 2])
    ours = torch.full((6, RANK), 7.0)
    theirs = ours.clone()

    ops.bgmv_shrink(x, w, ours, indices, 1.0)
    vllm_ops.bgmv_shrink(x, w, theirs, indices, 1.0)

    no_adapter = indices == -1
    assert torch.equal(ours[no_adapter], torch.zeros(2, RANK))
    torch.testing.assert_close(theirs[no_adapter], x[no_adapter] @ w[-1, 0].T)
    _assert_same(ours[~no_adapter], theirs[~no_adapter])


ROW_RULES = [
    # (op, token slots, output rows, add_inputs): vLLM's row rules besides "one per token".
    pytest.param("expand", [2], 5, True, id="expand: one token fills every row, adding"),
    pytest.param("expand", [2], 5, False, id="expand: one token fills every row"),
    pytest.param("expand", [-1], 5, False, id="expand: one no-adapter token zeroes every row"),
    pytest.param("expand", [0, 1, 2, 0, 1, 2, 3, 3, 3], 6, True, id="expand: extra tokens ignored"),
    pytest.param("expand_slice", [1], 4, True, id="expand_slice: one token fills every row"),
    pytest.param("shrink", [3], 4, False, id="shrink: one token fills every row"),
]


@pytest.mark.parametrize(("op", "slots", "out_rows", "add_inputs"), ROW_RULES)
def test_row_rules_match_vllm(op: str, slots: list[int], out_rows: int, add_inputs: bool) -> None:
    gen = torch.Generator().manual_seed(6)
    indices = torch.tensor(slots)
    width = RANK if op == "shrink" else 48
    x = torch.randn(len(slots), HIDDEN if op == "shrink" else MAX_RANK, generator=gen)
    w = torch.randn(SLOTS, 1, width, x.shape[1], generator=gen)
    out = torch.randn(out_rows, width, generator=gen)
    ours, theirs = out.clone(), out.clone()

    for impl, target, weights in ((ops, ours, w), (vllm_ops, theirs, _with_empty_slot(w))):
        if op == "shrink":
            impl.bgmv_shrink(x, weights, target, indices, 0.5)
        elif op == "expand":
            impl.bgmv_expand(x, weights, target, indices, add_inputs)
        else:
            impl.bgmv_expand_slice(x, weights, target, indices, 0, width, add_inputs)

    _assert_same(ours, theirs)


def test_reused_index_buffer_is_regrouped_when_its_content_changes() -> None:
    """The engine rewrites one index buffer in place every step; groupings must follow it."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(6, HIDDEN, generator=gen)
    w = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=gen)
    indices = torch.tensor([0, 0, 1, 1, 2, 2])
    for content in ([0, 0, 1, 1, 2, 2], [2, 2, 2, 0, 0, -1], [1, 0, 1, 0, 1, 0]):
        indices.copy_(torch.tensor(content))
        ours = torch.zeros(6, RANK)
        theirs = torch.zeros(6, RANK)
        ops.bgmv_shrink(x, w, ours, indices, 1.0)
        vllm_ops.bgmv_shrink(x, _with_empty_slot(w), theirs, indices, 1.0)
        _assert_same(ours, theirs)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        pytest.param(
            lambda x, w, out: ops.bgmv_shrink(x, w, out, torch.tensor([0, 4, 1]), 1.0),
            IndexError,
            "slot 4 out of range",
            id="slot past the stack",
        ),
        pytest.param(
            lambda x, w, out: ops.bgmv_shrink(x, w, out, torch.tensor([0, -2, 1]), 1.0),
            IndexError,
            "slot -2 out of range",
            id="negative slot other than -1",
        ),
        pytest.param(
            lambda x, w, out: ops.bgmv_shrink(x, w, out, torch.tensor([0, 1]), 1.0),
            ValueError,
            "3 input rows but 2 LoRA indices",
            id="indices shorter than tokens",
        ),
        pytest.param(
            lambda x, w, out: ops.bgmv_shrink(x, w, out[:2], torch.tensor([0, 1, 2]), 1.0),
            ValueError,
            "3 tokens cannot fill an output of 2 rows",
            id="output too short",
        ),
        pytest.param(
            lambda x, w, out: ops.bgmv_shrink(x, w[:, 0, 0], out, torch.tensor([0, 1, 2]), 1.0),
            ValueError,
            "LoRA weights must be",
            id="weights not stacked",
        ),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(call, error, match) -> None:
    x = torch.randn(3, HIDDEN)
    w = torch.randn(SLOTS, 1, RANK, HIDDEN)
    out = torch.full((3, RANK), 7.0)

    with pytest.raises(error, match=match):
        call(x, w, out)

    assert torch.equal(out, torch.full((3, RANK), 7.0))
