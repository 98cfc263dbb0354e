"""Grouped CPU versions of vLLM's six punica LoRA ops.

Drop-in replacements for `vllm.lora.ops.torch_ops` (same names, signatures and results).
vLLM's versions gather one copy of the adapter weights per token (`weights[indices]`) and
run a batched einsum, which on the CPU moves tokens x rank x hidden values through memory
for every layer and module. Here the tokens are grouped by adapter slot and each group
gets ONE matmul against that slot's weights: a contiguous group (the usual case: prefill
segments, or a batch that uses a single adapter) is a view of the input, any other group
is gathered once with `index_select` and written back with `index_add_`/`index_copy_`.

Numerics follow vLLM's: operands are first cast to the output's dtype and the product is
rounded to that dtype before it is scaled or added. The product itself is accumulated in
float32, because on CPUs without native bf16 matmul (AVX2) a bf16 GEMM is 20-50x slower
than rounding float32 operands that hold bf16 values exactly.

One deliberate difference: a token whose slot is -1 uses no adapter, as `PunicaWrapperBase`
documents and vLLM's GPU kernels implement. vLLM's torch ops index `weights[-1]`, i.e. the
LAST slot, which is only the same as "no adapter" while that slot is empty. Here such a
token's shrink output is 0, and an expand leaves it unchanged (`add_inputs`) or writes 0.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from . import OP_NAMES

__all__ = [*OP_NAMES, "new_step"]

NO_ADAPTER = -1
# Products in these dtypes are computed in float32 and rounded back (see the module doc).
_REDUCED = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class _Group:
    """The tokens of one adapter slot: a slice when they are contiguous, else row indices."""

    slot: int
    rows: slice | torch.Tensor


class _GroupCache:
    """Remembers the groupings of the last few index tensors, keyed by their content.

    One engine step calls the ops ~15 times per layer with the same indices; grouping costs
    a sort and a host sync, so it is done once per distinct index tensor. The key is the
    content itself (`torch.equal`), because tensors made under `torch.inference_mode` (the
    engine's case) carry no version counter to key on.
    """

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._entries: list[tuple[torch.Tensor, list[_Group]]] = []

    def groups(self, indices: torch.Tensor) -> list[_Group]:
        for stored, groups in self._entries:
            if stored.shape == indices.shape and torch.equal(stored, indices):
                return groups
        groups = _build_groups(indices)
        self._entries.insert(0, (indices.clone(), groups))
        del self._entries[self._size :]
        return groups


def _build_groups(indices: torch.Tensor) -> list[_Group]:
    n = indices.shape[0]
    if n == 0:
        return []
    slots, counts = torch.unique(indices, sorted=True, return_counts=True)
    if slots.shape[0] == 1:
        return [_Group(int(slots[0]), slice(0, n))]
    # A stable sort keeps each group's rows ascending, so a group is contiguous exactly when
    # its last row minus its first row is its size minus one.
    order = torch.argsort(indices, stable=True)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    firsts = order[starts]
    contiguous = order[ends - 1] - firsts + 1 == counts
    table = torch.stack([slots, starts, ends, firsts, contiguous.long()]).T.tolist()
    return [
        _Group(slot, slice(first, first + end - start) if whole else order[start:end])
        for slot, start, end, first, whole in table
    ]


_cache = _GroupCache()


class _StepMemo:
    """Per-step memo of what depends only on a step's LoRA index tensors and slot weights.

    vLLM's punica wrapper writes its index buffers in `update_metadata`, called before a step
    whenever the batch's adapter mapping or the slot layout changed, and passes slices of
    them to ~15 op calls per layer. Once the plugin has hooked that method (`new_step`),
    those buffers cannot change until the next call, so an index tensor is known by its
    address and length, with no content comparison, and the segment expansion of the sgmv
    ops (a host sync) is done once instead of once per call.

    Slot weights are written only when an adapter enters or leaves a slot, which changes the
    slot layout (`lora_index_to_id`) that vLLM passes along: what depends on one slot's
    weights (their rank without padding, the fused module weights of `linear`) is kept
    until that slot's entry in the layout changes.

    With more adapters in use than slots, adapters keep leaving and re-entering slots, and
    each entry would rebuild what depends on its weights (the fused matrices: ~12% of the
    engine's time in the many-adapters benchmark). So what is put for a slot is also kept by
    the slot's adapter id (`by_adapter`, least recently used out past `adapter_budget`
    bytes) and found again when that adapter enters any slot: vLLM writes the same weights
    for an id until it registers that id again (`forget_adapter`, hooked on registration).
    Keys must therefore not depend on the slot (or include it, and miss).

    What outlives steps and layouts, checking its own validity against the above (`linear`'s
    per-module banks of every slot's weights), is kept under `get_kept` until `reset`.

    Until the hook has run (the ops called directly, e.g. by tests) nothing is memoised.
    """

    def __init__(self, adapter_budget: int = 1 << 30) -> None:
        self._memo: dict[tuple[object, ...], object] = {}
        # Keyed (slot, ...): what depends on one slot's weights, kept while its adapter stays.
        self._by_slot: dict[tuple[object, ...], object] = {}
        # adapter id -> (its entries by key, their bytes), least recently used first.
        self._by_adapter: OrderedDict[object, tuple[dict[tuple[object, ...], object], int]] = (
            OrderedDict()
        )
        self._adapter_bytes = 0
        self.adapter_budget = adapter_budget
        # Kept until reset: what checks by itself whether it still holds (see the doc).
        self._kept: dict[tuple[object, ...], object] = {}
        self._layout: tuple[object, ...] | None = None
        # Bumped whenever a slot's memo goes (`slot_version`): every slot's, or one slot's.
        self._epoch = 0
        self._slot_epochs: dict[int, int] = {}
        self.scoped = False

    def new_step(self, layout: tuple[object, ...] | None = None) -> None:
        """The wrapper wrote new index buffers for slot layout `layout` (None: unknown)."""
        self.scoped = True
        self._memo.clear()
        if layout is None or layout != self._layout:
            old = self._layout
            if layout is None or old is None or len(layout) != len(old):
                self._by_slot.clear()
                self._epoch += 1
            else:
                # A slot's weights are rewritten only when another adapter enters it: with
                # many adapters over few slots, the other slots keep their work.
                changed = {i for i, (a, b) in enumerate(zip(layout, old, strict=True)) if a != b}
                self._forget_slots(changed)
        self._layout = layout

    def reset(self) -> None:
        """Back to memoising nothing (for code that calls the ops directly afterwards)."""
        self.scoped = False
        self._layout = None
        self._memo.clear()
        self._by_slot.clear()
        self._kept.clear()
        self._by_adapter.clear()
        self._adapter_bytes = 0
        self._epoch += 1

    def _forget_slots(self, slots: set[int]) -> None:
        for key in [k for k in self._by_slot if k[0] in slots]:
            del self._by_slot[key]
        for slot in slots:
            self._slot_epochs[slot] = self._slot_epochs.get(slot, 0) + 1

    def slot_version(self, slot: int) -> tuple[int, int]:
        """Changes whenever what was put for `slot` (`put_slot`) is dropped: equal versions
        mean the slot still holds the weights it held (what `linear`'s banks check)."""
        return self._epoch, self._slot_epochs.get(slot, 0)

    def forget_adapter(self, adapter: object) -> None:
        """vLLM registers adapter id `adapter` (again): its weights may be new. Also what a
        slot holding it keeps: the id can leave and re-enter the same slot between two
        steps, which leaves the layout as it was."""
        entries = self._by_adapter.pop(adapter, None)
        if entries is not None:
            self._adapter_bytes -= entries[1]
        if self._layout is not None and adapter in self._layout:
            self._forget_slots({i for i, held in enumerate(self._layout) if held == adapter})

    def get(self, key: tuple[object, ...]) -> object | None:
        return self._memo.get(key) if self.scoped else None

    def put(self, key: tuple[object, ...], value: object) -> None:
        if self.scoped:
            self._memo[key] = value

    def get_slot(self, slot: int, key: tuple[object, ...]) -> object | None:
        """What was put under `key` for the weights of `slot`'s adapter, in this slot while
        the adapter stays, or in any slot before (see `by_adapter`)."""
        if not self.scoped:
            return None
        value = self._by_slot.get((slot, *key))
        if value is not None:  # the usual case, once per module and step: nothing more
            return value
        adapter = self._adapter_in(slot)
        if adapter in self._by_adapter:
            value = self._by_adapter[adapter][0].get(key)
            if value is not None:
                self._by_adapter.move_to_end(adapter)
                self._by_slot[(slot, *key)] = value
        return value

    def put_slot(self, slot: int, key: tuple[object, ...], value: object, size: int = 0) -> None:
        """`size`: the bytes `value` holds (what counts against `adapter_budget`)."""
        if not self.scoped:
            return
        self._by_slot[(slot, *key)] = value
        adapter = self._adapter_in(slot)
        if adapter is None:
            return
        entries, held = self._by_adapter.pop(adapter, ({}, 0))
        entries[key] = value
        self._by_adapter[adapter] = (entries, held + size)
        self._adapter_bytes += size
        while self._adapter_bytes > self.adapter_budget and len(self._by_adapter) > 1:
            _, (_, freed) = self._by_adapter.popitem(last=False)
            self._adapter_bytes -= freed

    def _adapter_in(self, slot: int) -> object | None:
        layout = self._layout
        return layout[slot] if layout is not None and 0 <= slot < len(layout) else None

    def get_kept(self, key: tuple[object, ...]) -> object | None:
        """What was put under `key` since the last `reset`, whatever the steps and layouts
        between: its holder checks that it still applies."""
        return self._kept.get(key) if self.scoped else None

    def put_kept(self, key: tuple[object, ...], value: object) -> None:
        if self.scoped:
            self._kept[key] = value


_step = _StepMemo()
new_step = _step.new_step


def _address(t: torch.Tensor) -> tuple[int, int]:
    return t.data_ptr(), t.shape[0]


def _groups_of(indices: torch.Tensor, num_slots: int) -> list[_Group]:
    """Token rows grouped by slot, every slot checked against the stacked weights."""
    key = ("groups", *_address(indices), num_slots)
    memo = _step.get(key)
    if memo is not None:
        return memo  # type: ignore[return-value]
    groups = _cache.groups(indices)
    for group in groups:
        if not NO_ADAPTER <= group.slot < num_slots:
            raise IndexError(
                f"LoRA slot {group.slot} out of range: the stacked weights have "
                f"{num_slots} slots (valid: -1 for no adapter, 0..{num_slots - 1})"
            )
    _step.put(key, groups)
    return groups


def _explode(seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor) -> torch.Tensor:
    # Exactly vLLM's sgmv rule: the start offsets are ignored and segment i's slot covers the
    # next seq_len[i] rows from row 0 on; the bgmv op then does the grouped work.
    key = ("segments", *_address(seq_len_tensor), *_address(lora_indices_tensor))
    memo = _step.get(key)
    if memo is not None:
        return memo  # type: ignore[return-value]
    indices = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    # Held by the memo, so the address of this tensor stays its own for the whole step.
    _step.put(key, indices)
    return indices


def _stacked(weights: torch.Tensor) -> torch.Tensor:
    """The weights as (slots, out, in); vLLM stores them as (slots, 1, out, in)."""
    if weights.ndim == 4 and weights.shape[1] == 1:
        return weights.squeeze(1)
    if weights.ndim == 3:
        return weights
    raise ValueError(
        f"LoRA weights must be (slots, 1, out, in) or (slots, out, in), got {tuple(weights.shape)}"
    )


def _product(x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x @ w.T` with vLLM's rounding: operands and result in `dtype`."""
    if dtype in _REDUCED:
        x = x.to(dtype).float()
        w = w.to(dtype).float()
        return torch.mm(x, w.T).to(dtype)
    return torch.mm(x.to(dtype), w.to(dtype).T)


def _rows(x: torch.Tensor, rows: slice | torch.Tensor | None) -> torch.Tensor:
    if rows is None:
        return x
    return x[rows] if isinstance(rows, slice) else x.index_select(0, rows)


def _write(
    out: torch.Tensor, rows: slice | torch.Tensor | None, value: torch.Tensor, add: bool
) -> None:
    """`out[rows] (+)= value` for a view `out` (rows None: all of them), in place."""
    if rows is None:
        if add:
            out += value
        else:
            out.copy_(value)
    elif isinstance(rows, slice):
        if add:
            out[rows] += value
        else:
            out[rows] = value
    elif add:
        out.index_add_(0, rows, value)
    else:
        out.index_copy_(0, rows, value)


def _zero(out: torch.Tensor, rows: slice | torch.Tensor) -> None:
    if isinstance(rows, slice):
        out[rows] = 0
    else:
        out.index_fill_(0, rows, 0)


def _check_tokens(inputs: torch.Tensor, indices: torch.Tensor) -> None:
    if inputs.ndim != 2:
        raise ValueError(
            f"LoRA op inputs must be 2-D (tokens, features), got {tuple(inputs.shape)}"
        )
    if indices.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"{inputs.shape[0]} input rows but {indices.shape[0]} LoRA indices: "
            "every token needs exactly one slot index"
        )


# Groups this large amortise the check for rank padding (one pass over the slot's weights
# or the group's inputs, and a host sync); smaller groups are cheaper computed in full.
_TRIM_MIN_ROWS = 64


def _live_prefix(nonzero: torch.Tensor) -> int:
    """Length of the prefix that holds every True of a 1-D mask."""
    hits = torch.nonzero(nonzero)
    return int(hits[-1]) + 1 if hits.numel() else 0


def _trailing_rank(w: torch.Tensor, shrink: bool) -> int:
    """The rank of one slot's weights without vLLM's zero padding.

    Shrink weights are (rank, in): trailing all-zero rows give exactly-zero outputs. Expand
    weights are (out, rank): trailing all-zero columns multiply their inputs by zero, so
    those input columns add exactly nothing.
    """
    # abs().amax() != 0 rather than any(): torch's any() across the rows of a row-major
    # matrix is ~10x slower (a rank-64-padded 1536 x 64 expand slice: 264-361 vs 22-34 us,
    # bf16 and float32), and with many adapters over few slots this runs for every module of
    # every adapter entering a slot. A NaN stays nonzero (NaN != 0).
    magnitude = w.abs().amax(dim=1 if shrink else 0)
    return _live_prefix(magnitude != 0)


def _live_rank(w: torch.Tensor, slot: int, shrink: bool, rows: int) -> int | None:
    """`_trailing_rank` of slot `slot`'s weights `w`, or None: not worth checking.

    Within a hooked step the answer is memoised while the slot keeps its adapter (see
    `_StepMemo`), which makes the check pay off for decode batches too; otherwise only
    large groups check.
    """
    key = ("rank", w.data_ptr(), *w.shape, *w.stride(), shrink)
    memo = _step.get_slot(slot, key)
    if memo is not None:
        return memo  # type: ignore[return-value]
    if not _step.scoped and rows < _TRIM_MIN_ROWS:
        return None
    rank = _trailing_rank(w, shrink)
    _step.put_slot(slot, key, rank)
    return rank


def _apply(
    inputs: torch.Tensor,
    weights: torch.Tensor,
    target: torch.Tensor,
    groups: list[_Group],
    *,
    add: bool,
    scaling: float = 1.0,
    shrink: bool,
) -> None:
    """For every group: `target[rows] (+)= scaling * (inputs[rows] @ weights[slot].T)`.

    `target` is a column view of the output with as many rows as `inputs` and exactly
    `weights.shape[1]` columns; rows of slot -1 are zeroed (or left alone when adding).

    vLLM pads every adapter to `max_lora_rank` with zeros, so a rank-16 adapter served with
    max_lora_rank=64 would cost four times its work. For large groups the padding is cut
    off first: trailing all-zero rows of lora_a (shrink: those output columns are exactly
    0) and trailing all-zero input columns (expand: they add exactly nothing).
    """
    dtype = target.dtype
    n = inputs.shape[0]
    for group in groups:
        rows = group.rows
        if group.slot == NO_ADAPTER:
            if not add:
                _zero(target, rows)
            continue
        # Per-call overhead dominates decode steps: a group of every row (the common case
        # of one adapter per batch) skips the row views.
        whole = isinstance(rows, slice) and rows.stop - rows.start == n
        x, w, out = _rows(inputs, None if whole else rows), weights[group.slot], target
        rank = _live_rank(w, group.slot, shrink, x.shape[0])
        if rank is not None:
            if shrink:
                if rank < w.shape[0]:
                    _zero(target[:, rank:], rows)
                    w, out = w[:rank], target[:, :rank]
            else:
                x, w = x[:, :rank], w[:, :rank]
            if rank == 0:
                if not (shrink or add):
                    _zero(target, rows)
                continue
        if whole and not add and dtype == torch.float32 and out.is_contiguous():
            # Shrink into vLLM's float32 buffer: no temporary, no copy.
            torch.mm(x.to(dtype), w.to(dtype).T, out=out)
            if scaling != 1.0:
                out.mul_(scaling)
            continue
        value = _product(x, w, dtype)
        if scaling != 1.0:
            value = scaling * value
        _write(out, None if whole else rows, value, add)


def _broadcast_one(
    inputs: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    target: torch.Tensor,
    *,
    add: bool,
    scaling: float = 1.0,
    shrink: bool,
) -> None:
    """vLLM's rule for ONE token and a taller output: its result fills every output row."""
    row = torch.zeros((1, target.shape[1]), dtype=target.dtype, device=target.device)
    _apply(
        inputs,
        weights,
        row,
        _groups_of(indices, weights.shape[0]),
        add=False,
        scaling=scaling,
        shrink=shrink,
    )
    if add:
        target += row
    else:
        target.copy_(row.expand_as(target))


def _match_rows(n: int, out_rows: int, op: str, *, truncate: bool) -> None:
    if n == out_rows or n == 1 or (truncate and n > out_rows):
        return
    raise ValueError(f"{op}: {n} tokens cannot fill an output of {out_rows} rows")


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    """`output[t, :rank] = scaling * inputs[t] @ weights[slot(t)].T` for every token t."""
    weights = _stacked(lora_b_weights)
    _check_tokens(inputs, lora_indices_tensor)
    n, rank = inputs.shape[0], weights.shape[1]
    if rank > output_tensor.shape[1]:
        raise ValueError(
            f"bgmv_shrink: rank {rank} exceeds {output_tensor.shape[1]} output columns"
        )
    _match_rows(n, output_tensor.shape[0], "bgmv_shrink", truncate=False)
    target = output_tensor[:, :rank]
    if n == 1 and output_tensor.shape[0] != 1:
        _broadcast_one(
            inputs, weights, lora_indices_tensor, target, add=False, scaling=scaling, shrink=True
        )
        return
    groups = _groups_of(lora_indices_tensor, weights.shape[0])
    _apply(inputs, weights, target, groups, add=False, scaling=scaling, shrink=True)


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    """`output[t, :c] (+)= inputs[t] @ weights[slot(t)][:c].T`, c = the common width.

    As in vLLM, the adapter and the model may pad their widths differently (only the common
    columns are written), extra tokens beyond the output's rows are ignored, and a single
    token's result is broadcast to every output row.
    """
    weights = _stacked(lora_b_weights)
    _check_tokens(inputs, lora_indices_tensor)
    n, out_rows = inputs.shape[0], output_tensor.shape[0]
    _match_rows(n, out_rows, "bgmv_expand", truncate=True)
    common = min(weights.shape[1], output_tensor.shape[1])
    weights = weights[:, :common]
    target = output_tensor[:, :common]
    if n == 1 and out_rows != 1:
        _broadcast_one(inputs, weights, lora_indices_tensor, target, add=add_inputs, shrink=False)
        return
    if n > out_rows:
        inputs, lora_indices_tensor = inputs[:out_rows], lora_indices_tensor[:out_rows]
    groups = _groups_of(lora_indices_tensor, weights.shape[0])
    _apply(inputs, weights, target, groups, add=add_inputs, shrink=False)


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    """`output[t, offset:offset+size] (+)= inputs[t] @ weights[slot(t)].T`."""
    weights = _stacked(lora_b_weights)
    _check_tokens(inputs, lora_indices_tensor)
    n = inputs.shape[0]
    target = output_tensor[:, slice_offset : slice_offset + slice_size]
    if weights.shape[1] != slice_size or target.shape[1] != slice_size:
        raise ValueError(
            f"bgmv_expand_slice: weights of width {weights.shape[1]} cannot fill columns "
            f"{slice_offset}:{slice_offset + slice_size} of an output {output_tensor.shape[1]} wide"
        )
    _match_rows(n, output_tensor.shape[0], "bgmv_expand_slice", truncate=False)
    if n == 1 and output_tensor.shape[0] != 1:
        _broadcast_one(inputs, weights, lora_indices_tensor, target, add=add_inputs, shrink=False)
        return
    groups = _groups_of(lora_indices_tensor, weights.shape[0])
    _apply(inputs, weights, target, groups, add=add_inputs, shrink=False)


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
) -> None:
    """`bgmv_shrink` over segments: segment i is `seq_len[i]` tokens of slot `indices[i]`."""
    indices = _explode(seq_len_tensor, lora_indices_tensor)
    bgmv_shrink(inputs, lora_a_weights, output_tensor, indices, scaling)


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    """`bgmv_expand` over segments (see `sgmv_shrink`)."""
    indices = _explode(seq_len_tensor, lora_indices_tensor)
    bgmv_expand(inputs, lora_b_weights, output_tensor, indices, add_inputs)


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    """`bgmv_expand_slice` over segments (see `sgmv_shrink`)."""
    indices = _explode(seq_len_tensor, lora_indices_tensor)
    bgmv_expand_slice(
        inputs, lora_b_weights, output_tensor, indices, slice_offset, slice_size, add_inputs
    )
