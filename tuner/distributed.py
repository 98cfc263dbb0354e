"""Training under `accelerate launch` (or torchrun): several processes, one run.

Each process runs the same `tunegate tune` command; transformers' Trainer splits the batches
and syncs the gradients (DDP, or FSDP as `accelerate config` sets it). What the processes
share on disk is kept to the main process: it generates missing data and builds a missing
base model first (the others then read them), creates the one run folder and tells the others
its path, saves the result, evaluates and publishes. Launched as one plain process, nothing
here starts a process group and every helper is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = [
    "from_main_process",
    "is_distributed",
    "is_main_process",
    "main_process_echo",
    "main_process_first",
    "mean_over",
    "sum_over",
]

T = TypeVar("T")


def is_distributed() -> bool:
    """Launched as one of several processes (torchrun's environment, which accelerate sets)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """The process that writes the run folder, the store and the console (global rank 0)."""
    return os.environ.get("RANK", "0") == "0"


def main_process_echo(echo: Callable[[str], None]) -> Callable[[str], None]:
    """`echo` in the main process; the others stay quiet (one console, one set of lines)."""
    return echo if is_main_process() else (lambda _line: None)


def _state() -> Any:
    # accelerate's process state, as the Trainer builds it (a CPU process group without a
    # GPU); it starts torch.distributed once, and the Trainer's own state reuses that group.
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first, then the others (which find its files)."""
    if not is_distributed():
        yield
        return
    with _state().main_process_first():
        yield


def from_main_process(make: Callable[[], T]) -> T:
    """`make()` run in the main process only, its result given to every process (e.g. the
    run folder it creates)."""
    if not is_distributed():
        return make()
    from accelerate.utils import broadcast_object_list

    _state()
    made = [make() if is_main_process() else None]
    return broadcast_object_list(made, from_process=0)[0]  # type: ignore[no-any-return]


def sum_over(value: int) -> int:
    """`value` summed over the processes (e.g. the tokens each one trained on)."""
    return int(_all_reduce(value))


def mean_over(value: float) -> float:
    """`value` averaged over the processes (e.g. each one's mean training loss)."""
    if not is_distributed():
        return value
    return _all_reduce(value) / int(os.environ["WORLD_SIZE"])


def _all_reduce(value: float) -> float:
    if not is_distributed():
        return value
    import torch
    import torch.distributed as dist

    total = torch.tensor([value], dtype=torch.float64, device=_state().device)
    dist.all_reduce(total)
    return float(total.item())
