"""The LoRA work of one forward step, through vLLM's own CPU punica wrapper.

    .venv/bin/python loadtests/bench/lora_step.py [--out FILE] [--rounds N]

The engine benchmark (`fast_lora.py`) needs a quiet machine; this one isolates what the
LoRA path adds to one step and measures it as CPU time of this thread, which other
processes on a shared host inflate far less than wall time. One step = the default model's
30 layers x 4 LoRA modules (q/k/v, o, gate/up, down) through
`PunicaWrapperCPU.add_lora_linear`, exactly as vLLM's LoRA layers call it, after one
`update_metadata` for the batch. Variants, interleaved round by round in one process:

- `vLLM ops`: vLLM's torch ops (the wrapper as vLLM ships it);
- `grouped ops`: tunegate's ops as installed by the plugin, without its per-step memo;
- `grouped + step memo`: the ops and the `update_metadata` hook, without fused modules;
- `fused modules`: the plugin as installed (plus `add_lora_linear` fused per module).

Beside them, `base linears`: the same modules' own matmuls (x @ W.T at the model's widths, no
LoRA), the work the LoRA is added to; "LoRA / base" is then the share a step's linear layers
grow by, i.e. about what an engine loses to LoRA when the linears dominate its step.

Prints a table (median CPU ms per step over the rounds) and writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.bench.fast_lora import ADAPTER_RANK, LORA_ARGS
from loadtests.bench.fast_lora import MODULES as OP_MODULES

__all__ = ["main"]

LAYERS = 30
# (input width, output slices) of the default model's LoRA modules, per layer: the op
# benchmark's q/k/v, gate/up and down, plus o_proj (hidden -> hidden).
_HIDDEN = OP_MODULES[0][1]
MODULES = (*((width, slices) for _, width, slices in OP_MODULES), (_HIDDEN, (_HIDDEN,)))
SLOTS, MAX_RANK, RANK = LORA_ARGS["max_loras"], LORA_ARGS["max_lora_rank"], ADAPTER_RANK
VOCAB = 49152
# (label, tokens, adapters, prefill, churn): decode batches interleave adapters token by
# token, prefill batches hold 8 requests of equal length. Churn: slot 0 takes another
# adapter every step and the others keep theirs; "new" one that no slot held before (the
# worst case), "back" one of two that take turns (many adapters over few slots, each one
# coming back now and then).
BATCHES: tuple[tuple[str, int, int, bool, str | None], ...] = (
    # One request per adapter (many adapters in flight): each slot's row in place.
    ("decode 4 tok, 4 adapters", 4, 4, False, None),
    ("decode 4 tok, 4, new each step", 4, 4, False, "new"),
    ("decode 8 tok, 1 adapter", 8, 1, False, None),
    ("decode 32 tok, 1 adapter", 32, 1, False, None),
    ("decode 32 tok, 4 adapters", 32, 4, False, None),
    ("decode 32 tok, 4, new each step", 32, 4, False, "new"),
    ("decode 32 tok, 4, one back each step", 32, 4, False, "back"),
    ("prefill 512 tok, 1 adapter", 512, 1, True, None),
    ("prefill 512 tok, 4 adapters", 512, 4, True, None),
    # About one scheduler step of the engine benchmark's prefill-heavy workload.
    ("prefill 2048 tok, 4 adapters", 2048, 4, True, None),
)
VARIANTS = ("vLLM ops", "grouped ops", "grouped + step memo", "fused modules")
BASE = "base linears"


@dataclass
class _Module:
    x: Any
    out: Any
    lora_a: tuple[Any, ...]
    lora_b: tuple[Any, ...]
    slices: tuple[int, ...]


def _modules(tokens: int, dtype: Any, gen: Any) -> list[_Module]:
    import torch

    modules = []
    for _ in range(LAYERS):
        for width, slices in MODULES:
            # Rank-16 adapters in rank-64 slots (vLLM zero-pads to max_lora_rank).
            a = torch.zeros(SLOTS, 1, MAX_RANK, width, dtype=dtype)
            a[:, :, :RANK] = torch.randn(SLOTS, 1, RANK, width, generator=gen).to(dtype) * 0.01
            b = []
            for size in slices:
                w = torch.zeros(SLOTS, 1, size, MAX_RANK, dtype=dtype)
                w[..., :RANK] = torch.randn(SLOTS, 1, size, RANK, generator=gen).to(dtype) * 0.01
                b.append(w)
            modules.append(
                _Module(
                    x=torch.randn(tokens, width, generator=gen).to(dtype),
                    out=torch.zeros(tokens, sum(slices), dtype=dtype),
                    lora_a=tuple(a for _ in slices),
                    lora_b=tuple(b),
                    slices=slices,
                )
            )
    return modules


def _mapping(tokens: int, adapters: int, prefill: bool) -> Any:
    from vllm.lora.layers import LoRAMapping

    if prefill:
        per_request = tokens // 8
        requests = [1 + i % adapters for i in range(8)]
        index = [r for r in requests for _ in range(per_request)]
    else:
        requests = [1 + i % adapters for i in range(tokens)]
        index = requests
    return LoRAMapping(tuple(index), tuple(requests), is_prefill=True)


@contextmanager
def _variant(name: str) -> Iterator[None]:
    """Install the ops (and hook) of one variant on vLLM's CPU punica wrapper."""
    from vllm.lora.ops import torch_ops
    from vllm.lora.punica_wrapper import punica_cpu

    from gateway import fast_lora
    from gateway.fast_lora import ops
    from gateway.fast_lora.linear import fuse_add_lora_linear

    cls = punica_cpu.PunicaWrapperCPU
    saved_update, saved_linear = cls.update_metadata, cls.add_lora_linear
    saved_ops = {name: getattr(punica_cpu, name) for name in fast_lora.OP_NAMES}
    source = torch_ops if name == "vLLM ops" else ops
    for op in fast_lora.OP_NAMES:
        setattr(punica_cpu, op, getattr(source, op))
    if name in ("grouped + step memo", "fused modules"):
        fast_lora._hook_steps(cls, ops.new_step)
    if name == "fused modules":
        fuse_add_lora_linear(cls)
    ops._step.reset()
    try:
        yield
    finally:
        cls.update_metadata = saved_update  # type: ignore[method-assign]
        cls.add_lora_linear = saved_linear  # type: ignore[method-assign]
        for op, fn in saved_ops.items():
            setattr(punica_cpu, op, fn)
        ops._step.reset()


def _step_fn(batch: tuple[str, int, int, bool, str | None], dtype: Any) -> Callable[[], None]:
    import torch
    from vllm.lora.layers import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    _, tokens, adapters, prefill, churn = batch
    gen = torch.Generator().manual_seed(0)
    modules = _modules(tokens, dtype, gen)
    mapping = _mapping(tokens, adapters, prefill)

    wrapper = PunicaWrapperCPU(max_num_batched_tokens=4096, max_batches=256, device="cpu")
    # Adapter ids for slot 0: never held before, or two taking turns.
    newcomer = iter(range(5, 1 << 30)) if churn == "new" else itertools.cycle((5, 6))

    def step() -> None:
        # Once per step: the worst case for the memo (vLLM skips this call while a batch
        # keeps its adapter mapping, and the memo then lives on).
        layout: list[int | None] = [1, 2, 3, 4]
        if churn:
            # The slot's weights stay (the same numbers cost the same); its id is new.
            layout[0] = next(newcomer)
            slot_of = {1: layout[0]}
            index = tuple(slot_of.get(i, i) for i in mapping.index_mapping)
            wrapper.update_metadata(LoRAMapping(index, index), layout, SLOTS, VOCAB)
        else:
            wrapper.update_metadata(mapping, layout, SLOTS, VOCAB)
        for m in modules:
            wrapper.add_lora_linear(m.out, m.x, m.lora_a, m.lora_b, 1.0, m.slices)

    return step


def _base_fn(batch: tuple[str, int, int, bool, str | None], dtype: Any) -> Callable[[], None]:
    """The modules' base matmuls for the batch, with weights at the model's shapes."""
    import torch

    gen = torch.Generator().manual_seed(1)
    tokens = batch[1]
    layer = [
        (
            torch.randn(tokens, width, generator=gen).to(dtype),
            (torch.randn(sum(slices), width, generator=gen) * 0.02).to(dtype),
        )
        for width, slices in MODULES
    ]

    def step() -> None:
        for _ in range(LAYERS):
            for x, w in layer:
                torch.mm(x, w.T)

    return step


def _cpu_ms(fn: Callable[[], None]) -> float:
    started = time.thread_time()
    fn()
    return (time.thread_time() - started) * 1000


def run(rounds: int, dtype_name: str, variants: tuple[str, ...]) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(1)  # as vLLM's CPU worker runs on this 2-core host
    dtype = getattr(torch, dtype_name)
    rows = []
    with torch.inference_mode():
        for batch in BATCHES:
            step = _step_fn(batch, dtype)
            base = _base_fn(batch, dtype)
            times: dict[str, list[float]] = {v: [] for v in (*variants, BASE)}
            for _ in range(rounds):
                base()
                times[BASE].append(_cpu_ms(base))
                for variant in variants:
                    with _variant(variant):
                        # Warm: first update_metadata, caches (both of the "back" adapters).
                        for _ in range(2 if batch[4] == "back" else 1):
                            step()
                        times[variant].append(_cpu_ms(step))
            row: dict[str, Any] = {"batch": batch[0]}
            for variant in (*variants, BASE):
                ordered = sorted(times[variant])
                row[variant] = ordered[len(ordered) // 2]
            if "fused modules" in row:
                row["fused / base"] = row["fused modules"] / row[BASE]
            rows.append(row)
            print(_line(row), file=sys.stderr, flush=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    cells = " ".join(f"{row[v]:>20.1f}" if v in row else f"{'-':>20}" for v in (*VARIANTS, BASE))
    share = f"{row['fused / base']:>14.2f}" if "fused / base" in row else f"{'-':>14}"
    return f"{row['batch']:32} {cells} {share}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per batch")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--skip-vllm-ops",
        action="store_true",
        help="leave out vLLM's own ops (seconds per prefill step on this CPU)",
    )
    parser.add_argument(
        "--variants",
        help=f"comma-separated subset of: {', '.join(VARIANTS)} (default: all but see above)",
    )
    args = parser.parse_args(argv)
    variants = VARIANTS[1:] if args.skip_vllm_ops else VARIANTS
    if args.variants:
        variants = tuple(v.strip() for v in args.variants.split(","))
        unknown = set(variants) - set(VARIANTS)
        if unknown:
            parser.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    head = " ".join(f"{v:>20}" for v in (*VARIANTS, BASE))
    print(f"{'CPU ms per step':32} {head} {'fused / base':>14}", file=sys.stderr)
    rows = run(args.rounds, args.dtype, variants)
    result = {
        "benchmark": "lora_step",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "dtype": args.dtype,
        "layers": LAYERS,
        "rounds": args.rounds,
        "load_avg_1m": os.getloadavg()[0],
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
