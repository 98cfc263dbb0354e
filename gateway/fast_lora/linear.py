"""A fused `PunicaWrapperCPU.add_lora_linear`: a whole LoRA module in two matmuls per adapter.

vLLM's CPU wrapper applies a module's LoRA as one shrink op per slice (q, k and v are three)
into float32 buffers, then one expand op per slice. With the grouped ops each of those calls
does, per adapter of the batch, a row gather, a matmul and a scatter: in a decode step over
four interleaved adapters that is ~70 small torch calls for q/k/v alone, and their fixed cost,
not the arithmetic, is the step's LoRA time (docs/fast-lora.md).

Here the slices are fused per adapter slot: their `lora_a` rows stacked into one matrix, their
`lora_b` into one block-diagonal matrix, each cut to the slot's live rank (vLLM zero-pads every
adapter to `max_lora_rank`). The batch's rows are gathered once in slot order; each slot does
one shrink and its expand (block-diagonal for a few rows, slice by slice for many), added in
place where its rows are contiguous, else scattered back to its rows. Those per-slot matrices
depend only on the slot weights, so they are built once per adapter entering a slot (see
`ops._StepMemo`), and the row order once per step.

Results equal the wrapper's with the grouped ops: every output column belongs to one slice,
and the block-diagonal zeros add exact zeros; the float32 shrink buffer and the rounding of
reduced dtypes are kept (see `ops`). Anything outside what the fusion covers (no hooked step,
a caller's own buffer, rows that do not match the wrapper's token indices, unexpected shapes)
runs vLLM's wrapper unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import ops

__all__ = ["fuse_add_lora_linear"]


# From this many rows of one slot on, the expand runs slice by slice: the block-diagonal
# matrix's zeros double (gate/up) or triple (q/k/v) its arithmetic, which at prefill sizes
# costs more than the extra calls (one module at 512 rows: 0.49 ms per slice vs 0.97 ms
# block-diagonal for q/k/v, 1.50 vs 2.80 ms for gate/up); below it, fewer calls win.
_PER_SLICE_ROWS = 64


@dataclass(frozen=True)
class _Slice:
    """One slice's part of the fused matrices: its output columns and its rank columns."""

    cols: slice
    ranks: slice
    b_t: torch.Tensor  # (rank, columns)


@dataclass(frozen=True)
class _SlotWeights:
    """One slot's slices fused, kept transposed and contiguous as the matmuls read them
    (a few us less per call at decode sizes): `a_t` (in, sum of ranks), `b_t` (sum of ranks,
    sum of slices), and `b_t` slice by slice (`slices`: those of rank > 0; `covered`: they
    cover every output column, so a per-slice result needs no zeroed buffer)."""

    a_t: torch.Tensor
    b_t: torch.Tensor
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
        # Written block by block into zeros: torch.block_diag plus a transposed copy took
        # 3x as long (one gate/up module: 209 vs 70 us), paid per adapter entering a slot.
        b_t = torch.zeros(rank, col, dtype=torch.float32)
        for part in slices:
            b_t[part.ranks, part.cols] = part.b_t
        a_t = torch.cat(a_parts).T.contiguous()
        fused = _SlotWeights(a_t, b_t, tuple(slices), covered)
    size = 0
    if fused is not None:
        parts = (fused.a_t, fused.b_t, *(part.b_t for part in fused.slices))
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
    """The decode-like part of a batch as one batched matmul: the rows of each of `slots`
    gathered into `n` rows per slot (`rows`, batch row indices; short slots padded with their
    own last row, whose padded results `mask` zeroes; None when every slot has exactly `n`).
    The order's other spans (`rest`: a prefill chunk beside the decodes) go slot by slot."""

    slots: tuple[int, ...]
    n: int
    rows: torch.Tensor
    mask: torch.Tensor | None
    rest: tuple[tuple[int, int, int], ...]


def _batched(order: _Order) -> _Batched | None:
    """The order's small spans as equal groups for `torch.bmm`, memoised for the step; None
    where that does not pay: fewer than two small spans (a prefill, one adapter) or padding
    that would more than double their work. Small: under `_PER_SLICE_ROWS` rows, the largest
    dropped until the padding criterion holds (one prefill chunk beside many decodes)."""
    key = ("batched", order.spans, None if order.rows is None else ops._address(order.rows))
    memo = ops._step.get(key)
    if memo is not None:
        return memo if isinstance(memo, _Batched) else None
    small = sorted((s for s in order.spans if s[2] - s[1] < _PER_SLICE_ROWS), key=_span_size)
    while small and _span_size(small[-1]) * len(small) > 2 * sum(map(_span_size, small)):
        small.pop()
    batched: _Batched | None = None
    if len(small) >= 2:
        chosen = [s for s in order.spans if s in small]  # in batch order: sequential gathers
        n = _span_size(small[-1])
        index, keep = [], []
        for _, start, stop in chosen:
            index += [*range(start, stop), *[stop - 1] * (n - (stop - start))]
            keep += [1.0] * (stop - start) + [0.0] * (n - (stop - start))
        positions = torch.tensor(index)
        # Spans index the batch's own rows when it is in slot order, else the gathered order.
        rows = positions if order.rows is None else order.rows[positions]
        padded = any(_span_size(s) < n for s in chosen)
        mask = torch.tensor(keep).view(len(chosen), n, 1) if padded else None
        rest = tuple(s for s in order.spans if s not in small)
        batched = _Batched(tuple(slot for slot, _, _ in chosen), n, rows, mask, rest)
    ops._step.put(key, batched if batched is not None else False)
    return batched


def _span_size(span: tuple[int, int, int]) -> int:
    return span[2] - span[1]


@dataclass(frozen=True)
class _Stack:
    """The slots' fused matrices stacked for `torch.bmm`: `a_t` (slots, in, rank), and where
    every slot's slices have the same ranks `slices`: (columns, rank columns, (slots, rank,
    columns)) per slice, else `b_t` (slots, rank, width) block-diagonal. Stacking copies
    every slot's matrices, whenever the batch's set of slots changes: only what is used."""

    a_t: torch.Tensor
    b_t: torch.Tensor | None
    slices: tuple[tuple[slice, slice, torch.Tensor], ...] | None
    covered: bool


def _stack(
    lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...], slots: tuple[int, ...]
) -> _Stack | None:
    """The slots' fused matrices stacked, memoised while the slot layout stays; None if a
    slot is empty or the slots' live ranks differ."""
    key = ("stack", *(w.data_ptr() for w in (*lora_a, *lora_b)), *slots)
    memo = ops._step.get_layout(key)
    if memo is not None:
        return memo if isinstance(memo, _Stack) else None
    weights = [_slot_weights(lora_a, lora_b, slot) for slot in slots]
    stack: _Stack | None = None
    present = [w for w in weights if w is not None]
    if len(present) == len(weights) and len({w.a_t.shape for w in present}) == 1:
        layouts = {
            tuple((p.cols.start, p.cols.stop, p.ranks.start, p.ranks.stop) for p in w.slices)
            for w in present
        }
        slices = None
        if len(layouts) == 1:
            slices = tuple(
                (part.cols, part.ranks, torch.stack([w.slices[i].b_t for w in present]))
                for i, part in enumerate(present[0].slices)
            )
        a_t = torch.stack([w.a_t for w in present])
        b_t = None if slices is not None else torch.stack([w.b_t for w in present])
        stack = _Stack(a_t, b_t, slices, present[0].covered)
    ops._step.put_layout(key, stack if stack is not None else False)
    return stack


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
    batched = _batched(order)
    stack = _stack(lora_a, lora_b, batched.slots) if batched is not None else None
    spans = order.spans
    if batched is not None and stack is not None:
        # Decode over several adapters (interleaved, or one request each): every slot has a
        # handful of rows, and the fixed cost of four calls per slot (shrink, expand,
        # scatter, and its share of the gather) outweighs their arithmetic; one gather, two
        # batched matmuls and one scatter.
        xb = x2.index_select(0, batched.rows).view(len(batched.slots), batched.n, -1)
        h = _shrink(xb, stack.a_t, scale, dtype)
        if stack.slices is not None:
            # Slice by slice: a decode step reads every slot's expand matrices for a few rows,
            # and the block-diagonal zeros would triple (q/k/v) or double (gate/up) those
            # reads and the copies that stack them; a few more small calls cost less.
            pieces = [torch.bmm(h[:, :, ranks], b_t) for _, ranks, b_t in stack.slices]
            if stack.covered:
                value = torch.cat(pieces, dim=2)
            else:
                value = h.new_zeros((len(batched.slots), batched.n, width))
                for (cols, _, _), piece in zip(stack.slices, pieces, strict=True):
                    value[:, :, cols] = piece
        else:
            assert stack.b_t is not None
            value = torch.bmm(h, stack.b_t)
        if batched.mask is not None:
            value.mul_(batched.mask)
        if reduced:
            value = value.to(dtype)
        out.index_add_(0, batched.rows, value.view(-1, width))
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
            if rows >= _PER_SLICE_ROWS:
                for part in weights.slices:
                    out[start:stop, part.cols].addmm_(h[:, part.ranks], part.b_t)
            else:
                out[start:stop].addmm_(h, weights.b_t.to(dtype))
            continue
        if rows >= _PER_SLICE_ROWS:
            new = torch.empty if weights.covered else torch.zeros
            value = new((rows, width), dtype=h.dtype)
            for part in weights.slices:
                torch.mm(h[:, part.ranks], part.b_t, out=value[:, part.cols])
        else:
            value = torch.mm(h, weights.b_t.to(h.dtype))
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
