"""A fused `PunicaWrapperCPU.add_lora_linear`: a whole LoRA module in two matmuls per adapter.

vLLM's CPU wrapper applies a module's LoRA as one shrink op per slice (q, k and v are three)
into float32 buffers, then one expand op per slice. With the grouped ops each of those calls
does, per adapter of the batch, a row gather, a matmul and a scatter: in a decode step over
four interleaved adapters that is ~70 small torch calls for q/k/v alone, and their fixed cost,
not the arithmetic, is the step's LoRA time (docs/fast-lora.md).

Here the slices are fused per adapter slot: their `lora_a` rows stacked into one matrix, their
`lora_b` kept slice by slice, each cut to the slot's live rank (vLLM zero-pads every adapter
to `max_lora_rank`). The batch's rows are gathered once in slot order; each slot does one
shrink and one expand per slice, added in place where its rows are contiguous, else
scattered back to its rows; decode rows of several slots go through batched matmuls over a
bank of every slot's weights (`_Bank`). Those per-slot matrices depend only on the slot
weights, so they are built once per adapter entering a slot (see `ops._StepMemo`), and the
row order once per step.

Results equal the wrapper's with the grouped ops: every output column belongs to one slice;
the float32 shrink buffer and the rounding of reduced dtypes are kept (see `ops`). Anything
outside what the fusion covers (no hooked step, a caller's own buffer, rows that do not match
the wrapper's token indices, unexpected shapes) runs vLLM's wrapper unchanged.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import ops

__all__ = ["fuse_add_lora_linear"]


# Spans of fewer rows than this (decodes) may go through the batched matmuls; larger ones
# (prefill chunks) are worth their own calls.
_SMALL_ROWS = 64


@dataclass(frozen=True)
class _Slice:
    """One slice's part of the fused matrices: its output columns and its rank columns."""

    cols: slice
    ranks: slice
    b_t: torch.Tensor  # (rank, columns)


@dataclass(frozen=True)
class _SlotWeights:
    """One slot's slices fused, kept transposed and contiguous as the matmuls read them
    (a few us less per call at decode sizes): `a_t` (in, sum of ranks) and `b_t` slice by
    slice (`slices`: those of rank > 0; `covered`: they cover every output column, so a
    per-slice result needs no zeroed buffer). No block-diagonal `b_t` of all slices: it
    saved one or two calls per module for a single slot's few rows (under 1% of a step)
    and doubled the bytes kept per adapter, so that 64 adapters over few slots no longer
    fit the per-adapter memo and rebuilt their matrices at every slot entry."""

    a_t: torch.Tensor
    slices: tuple[_Slice, ...]
    covered: bool


@dataclass(frozen=True)
class _Order:
    """The rows that use an adapter, by slot. `rows` None: each span is a range of the
    batch's own rows (every slot's rows contiguous); else the rows to gather in slot order,
    the spans being ranges of that gathered order."""

    rows: torch.Tensor | None
    spans: tuple[tuple[int, int, int], ...]  # (slot, start, stop)


def _slot_weights(
    lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...], slot: int
) -> _SlotWeights | None:
    """The slot's slices fused (in float32, the shrink buffer's dtype), memoised while the
    slot keeps its adapter; None when the slot contributes nothing (an empty slot)."""
    key = ("fused", *(w.data_ptr() for w in (*lora_a, *lora_b)))
    memo = ops._step.get_slot(slot, key)
    if memo is not None:
        return memo if isinstance(memo, _SlotWeights) else None
    a_parts, b_parts = [], []
    for a_all, b_all in zip(lora_a, lora_b, strict=True):
        a, b = ops._stacked(a_all)[slot], ops._stacked(b_all)[slot]
        # Rank j adds x . a[j] * b[:, j]: nothing once either is zero from j on.
        rank = min(ops._trailing_rank(a, shrink=True), ops._trailing_rank(b, shrink=False))
        a_parts.append(a[:rank].float())
        b_parts.append(b[:, :rank].float())
    fused: _SlotWeights | None = None
    if any(part.shape[0] for part in a_parts):
        slices, col, rank = [], 0, 0
        for b in b_parts:
            if b.shape[1]:
                cols, ranks = slice(col, col + b.shape[0]), slice(rank, rank + b.shape[1])
                # A copy even where b.T is already contiguous (rank 1): the memo outlives
                # the slot's tenure (ops._StepMemo.by_adapter), and the slot gets rewritten.
                slices.append(_Slice(cols, ranks, b.T.clone(memory_format=torch.contiguous_format)))
            col, rank = col + b.shape[0], rank + b.shape[1]
        covered = len(slices) == len(b_parts)
        a_t = torch.cat(a_parts).T.contiguous()
        fused = _SlotWeights(a_t, tuple(slices), covered)
    size = 0
    if fused is not None:
        parts = (fused.a_t, *(part.b_t for part in fused.slices))
        size = sum(t.numel() * t.element_size() for t in parts)
    ops._step.put_slot(slot, key, fused if fused is not None else False, size)
    return fused


def _order(indices: torch.Tensor, num_slots: int) -> _Order:
    """Rows grouped by slot (slot -1 left out), memoised for the step by the index tensor."""
    key = ("order", *ops._address(indices), num_slots)
    memo = ops._step.get(key)
    if memo is not None:
        return memo  # type: ignore[return-value]
    groups = [g for g in ops._groups_of(indices, num_slots) if g.slot != ops.NO_ADAPTER]
    if all(isinstance(g.rows, slice) for g in groups):
        # The usual prefill batch (and any one-adapter batch): row views, no gather.
        spans = [(g.slot, g.rows.start, g.rows.stop) for g in groups]  # type: ignore[union-attr]
        order = _Order(None, tuple(spans))
    else:
        parts, spans, start = [], [], 0  # type: ignore[var-annotated]
        for g in groups:
            rows = g.rows
            part = torch.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows
            parts.append(part)
            spans.append((g.slot, start, start + part.shape[0]))
            start += part.shape[0]
        order = _Order(torch.cat(parts), tuple(spans))
    ops._step.put(key, order)
    return order


@dataclass(frozen=True)
class _Batched:
    """The decode-like part of a batch as one batched matmul over a grid of slots, `n` rows
    each: `grid` the slots (None: every slot, in order, so that the weights need no copy),
    `gather` the batch rows that fill it (a slot with fewer rows, or none, repeats a row
    whose result is dropped), `keep` the grid positions of real rows and `targets` their
    batch rows, ascending (None: every position, every batch row). `slots`: the slots with
    rows. The order's other spans (`rest`: a prefill chunk beside the decodes) go slot by
    slot."""

    slots: tuple[int, ...]
    grid: torch.Tensor | None
    n: int
    gather: torch.Tensor
    keep: torch.Tensor | None
    targets: torch.Tensor | None
    rest: tuple[tuple[int, int, int], ...]


def _batched(order: _Order, num_slots: int, batch_rows: int) -> _Batched | None:
    """The order's small spans as equal groups for `torch.bmm`, memoised for the step; None
    where that does not pay: fewer than two small spans (a prefill, one adapter) or padding
    that would more than double their work. Small: under `_SMALL_ROWS` rows, the largest
    dropped until the padding criterion holds (one prefill chunk beside many decodes)."""
    key = (
        "batched",
        order.spans,
        None if order.rows is None else ops._address(order.rows),
        num_slots,
        batch_rows,
    )
    memo = ops._step.get(key)
    if memo is not None:
        return memo if isinstance(memo, _Batched) else None
    small = sorted((s for s in order.spans if s[2] - s[1] < _SMALL_ROWS), key=_span_size)
    while small and _span_size(small[-1]) * len(small) > 2 * sum(map(_span_size, small)):
        small.pop()
    batched: _Batched | None = None
    if len(small) >= 2:
        n = _span_size(small[-1])
        spans = {slot: (start, stop) for slot, start, stop in small}
        # Every slot when at least half have rows: the bank's weights as they are, the
        # empty slots' arithmetic wasted; else only those slots, their weights copied.
        everyone = 2 * len(spans) >= num_slots
        grid = list(range(num_slots)) if everyone else sorted(spans)
        first = next(iter(spans.values()))[0]
        index: list[int] = []
        keep: list[int] = []
        for g, slot in enumerate(grid):
            start, stop = spans.get(slot, (first, first))
            filler = stop - 1 if stop > start else start
            index += [*range(start, stop), *[filler] * (n - (stop - start))]
            keep += range(g * n, g * n + stop - start)
        positions = torch.tensor(index)
        # Spans index the batch's own rows when it is in slot order, else the gathered order.
        gather = positions if order.rows is None else order.rows[positions]
        real_positions = torch.tensor(keep)
        ascending, by_target = torch.sort(gather[real_positions])
        kept = real_positions[by_target]
        every_position = len(keep) == len(index) and torch.equal(kept, torch.arange(len(index)))
        every_row = len(keep) == batch_rows  # targets are distinct rows of the batch
        batched = _Batched(
            slots=tuple(sorted(spans)),
            grid=None if everyone else torch.tensor(grid),
            n=n,
            gather=gather,
            keep=None if every_position else kept,
            targets=None if every_row else ascending,
            rest=tuple(s for s in order.spans if s[0] not in spans),
        )
    ops._step.put(key, batched if batched is not None else False)
    return batched


def _span_size(span: tuple[int, int, int]) -> int:
    return span[2] - span[1]


@dataclass
class _Bank:
    """Every slot's fused matrices of one module, in one tensor per operand for `torch.bmm`:
    `a_t` (slots, in, rank), per slice (columns, rank columns, b (slots, slice rank,
    columns)). Each slice's rank is the largest live rank its slots have had, the rest of
    a slot's share zero (adding exact zeros). A row is rewritten when another adapter's
    weights enter its slot (`versions`: `ops._StepMemo.slot_version` when each row was
    last checked; `held`: the `_SlotWeights` it was written from, found again when an
    adapter comes back), so a batch over any set of slots reads the weights in place:
    stacking them per batch instead copied every slot's matrices whenever the set changed,
    which with many adapters over few slots is every few steps (16% of the engine worker
    in the many-adapters benchmark)."""

    a_t: torch.Tensor
    slices: tuple[tuple[slice, slice, torch.Tensor], ...]
    covered: bool
    held: list[_SlotWeights | None]
    versions: list[tuple[int, int] | None]


def _bank(
    lora_a: tuple[torch.Tensor, ...],
    lora_b: tuple[torch.Tensor, ...],
    output_slices: tuple[int, ...],
    slots: tuple[int, ...],
) -> _Bank:
    """The module's bank with `slots` holding their current adapters' weights."""
    key = ("bank", *(w.data_ptr() for w in (*lora_a, *lora_b)))
    bank = ops._step.get_kept(key)
    num_slots, _, width = ops._stacked(lora_a[0]).shape
    if (
        isinstance(bank, _Bank)
        and bank.a_t.shape[:2] == (num_slots, width)
        and len(bank.slices) == len(output_slices)
    ):
        # Once per module and step: nothing more unless a slot took another adapter.
        stale = [s for s in slots if bank.versions[s] != ops._step.slot_version(s)]
        if not stale:
            return bank
    else:
        bank, stale = None, list(slots)
    weights = {slot: _slot_weights(lora_a, lora_b, slot) for slot in stale}
    starts = list(itertools.accumulate(output_slices, initial=0))
    previous = None if bank is None else [b.shape[1] for _, _, b in bank.slices]
    widths = [0] * len(output_slices) if previous is None else list(previous)
    for w in weights.values():
        for part in () if w is None else w.slices:
            j = starts.index(part.cols.start)
            widths[j] = max(widths[j], part.ranks.stop - part.ranks.start)
    if bank is None or widths != previous:
        # Wider than before (never narrower: other slots may hold wider adapters); every
        # row of the batch is written afresh.
        offsets = list(itertools.accumulate(widths, initial=0))
        bank = _Bank(
            a_t=torch.zeros(num_slots, width, offsets[-1]),
            slices=tuple(
                (
                    slice(starts[j], starts[j + 1]),
                    slice(offsets[j], offsets[j + 1]),
                    torch.zeros(num_slots, widths[j], output_slices[j]),
                )
                for j in range(len(output_slices))
            ),
            covered=all(widths),
            held=[None] * num_slots,
            versions=[None] * num_slots,
        )
        ops._step.put_kept(key, bank)
        weights.update({s: _slot_weights(lora_a, lora_b, s) for s in slots if s not in weights})
    for slot, w in weights.items():
        bank.versions[slot] = ops._step.slot_version(slot)
        if bank.held[slot] is w:  # None (an empty slot) too: its row is zero
            continue
        # Zero shrink columns zero the expand rows they meet, so stale b rows need no reset.
        bank.a_t[slot] = 0
        bank.held[slot] = w
        if w is None:
            continue
        for part in w.slices:
            _, columns, b = bank.slices[starts.index(part.cols.start)]
            rank = part.ranks.stop - part.ranks.start
            bank.a_t[slot, :, columns.start : columns.start + rank] = w.a_t[:, part.ranks]
            b[slot, :rank] = part.b_t
    return bank


def _shrink(x: torch.Tensor, a_t: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """`scale * x @ a_t` as the wrapper's float32 shrink buffer holds it, rounded as `ops`
    expands it: in a reduced dtype rounded to it and computed on in float32; in float32 in the
    model's dtype. `x` is (rows, in) or (slots, rows, in) with `a_t` stacked to match."""
    h = torch.matmul(x.float(), a_t)
    if scale != 1.0:
        h.mul_(scale)
    return h.to(dtype).float() if dtype in ops._REDUCED else h.to(dtype)


def _fused(
    wrapper: Any,
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: tuple[torch.Tensor, ...],
    lora_b: tuple[torch.Tensor, ...],
    scale: float,
    output_slices: tuple[int, ...],
) -> bool:
    """`y += scale * x @ A.T @ B.T` per row's slot, all slices at once; False: not covered
    (nothing written)."""
    if not ops._step.scoped or not lora_a or len(lora_a) != len(lora_b):
        return False
    x2, y2 = x.view(-1, x.shape[-1]), y.view(-1, y.shape[-1])
    indices = wrapper.token_lora_indices
    n, width = x2.shape[0], sum(output_slices)
    if indices.shape[0] != n or y2.shape[0] != n or width > y2.shape[1]:
        return False
    num_slots = ops._stacked(lora_a[0]).shape[0]
    for a_all, b_all, size in zip(lora_a, lora_b, output_slices, strict=True):
        a, b = ops._stacked(a_all), ops._stacked(b_all)
        if a.shape[0] != num_slots or b.shape[0] != num_slots or b.shape[1] != size:
            return False
        if a.shape[2] != x2.shape[1] or b.shape[2] != a.shape[1]:
            return False
    order = _order(indices, num_slots)
    out = y2[:, :width]
    dtype = y2.dtype
    reduced = dtype in ops._REDUCED
    batched = _batched(order, num_slots, n)
    spans = order.spans
    if batched is not None:
        # Decode over several adapters (interleaved, or one request each): every slot has a
        # handful of rows, and the fixed cost of four calls per slot (shrink, expand,
        # scatter, and its share of the gather) outweighs their arithmetic; one gather, two
        # batched matmuls and one scatter.
        bank = _bank(lora_a, lora_b, output_slices, batched.slots)
        grid = num_slots if batched.grid is None else batched.grid.shape[0]
        a_t = bank.a_t if batched.grid is None else bank.a_t.index_select(0, batched.grid)
        xb = x2.index_select(0, batched.gather).view(grid, batched.n, -1)
        h = _shrink(xb, a_t, scale, dtype)
        # Slice by slice: a decode step reads every slot's expand matrices for a few rows,
        # and block-diagonal zeros would triple (q/k/v) or double (gate/up) those reads.
        pieces = []
        for cols, ranks, b in bank.slices:
            if b.shape[1]:
                b = b if batched.grid is None else b.index_select(0, batched.grid)
                pieces.append((cols, torch.bmm(h[:, :, ranks], b)))
        if bank.covered:
            value = torch.cat([piece for _, piece in pieces], dim=2).view(-1, width)
        else:
            value = h.new_zeros((grid * batched.n, width))
            for cols, piece in pieces:
                value[:, cols] = piece.view(-1, piece.shape[2])
        if batched.keep is not None:
            value = value.index_select(0, batched.keep)
        if reduced:
            value = value.to(dtype)
        if batched.targets is None:
            out.add_(value)
        else:
            # Distinct rows: gather, add, put back is half the time of `index_add_`'s
            # row-by-row accumulation (8 rows x 3,072 bf16 columns: 28 vs 62 us).
            targets = batched.targets
            out.index_put_((targets,), out.index_select(0, targets).add_(value))
        spans = batched.rest
        if not spans:
            return True
    xs = x2 if order.rows is None else x2.index_select(0, order.rows)
    for slot, start, stop in spans:
        weights = _slot_weights(lora_a, lora_b, slot)
        if weights is None:  # an empty slot adds exactly nothing
            continue
        h = _shrink(xs[start:stop], weights.a_t, scale, dtype)
        rows = stop - start
        if order.rows is None and not reduced:
            # Contiguous rows in the model's own dtype: accumulate in place, one pass over
            # the output instead of a product written out and then added.
            for part in weights.slices:
                out[start:stop, part.cols].addmm_(h[:, part.ranks], part.b_t)
            continue
        new = torch.empty if weights.covered else torch.zeros
        value = new((rows, width), dtype=h.dtype)
        for part in weights.slices:
            torch.mm(h[:, part.ranks], part.b_t, out=value[:, part.cols])
        if reduced:
            value = value.to(dtype)
        if order.rows is None:
            out[start:stop] += value
        else:
            # Each slot's rows straight back to their places: no zero-filled buffer of the
            # whole batch (at prefill sizes, writing and copying it cost more than the
            # slots' matmuls did).
            out.index_add_(0, order.rows[start:stop], value)
    return True


def fuse_add_lora_linear(wrapper: type) -> None:
    """Route `wrapper.add_lora_linear` through the fused path (idempotent)."""
    original: Callable[..., Any] = wrapper.add_lora_linear  # type: ignore[attr-defined]
    if getattr(original, "_tunegate_fused", False):
        return

    @functools.wraps(original)
    def add_lora_linear(
        self: Any,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        lora_b_stacked: tuple[torch.Tensor, ...],
        scale: float,
        output_slices: tuple[int, ...],
        *,
        buffer: tuple[torch.Tensor, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        # vLLM's CPU wrapper ignores extra keywords; a caller's own buffer is its business.
        if buffer is None and _fused(
            self, y, x, tuple(lora_a_stacked), tuple(lora_b_stacked), scale, output_slices
        ):
            return None
        return original(
            self,
            y,
            x,
            lora_a_stacked,
            lora_b_stacked,
            scale,
            output_slices,
            buffer=buffer,
            **kwargs,
        )

    add_lora_linear._tunegate_fused = True  # type: ignore[attr-defined]
    add_lora_linear._tunegate_original = original  # type: ignore[attr-defined]
    wrapper.add_lora_linear = add_lora_linear  # type: ignore[attr-defined]
