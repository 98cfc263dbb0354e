"""Fast LoRA on the CPU: grouped punica ops, installed as a vLLM general plugin.

vLLM loads every `vllm.general_plugins` entry point in each of its processes (front end,
engine core, workers) and calls it before the model is built. `register` then replaces
the six punica ops that `vllm.lora.punica_wrapper.punica_cpu` imported from
`vllm.lora.ops.torch_ops` with the grouped versions in `gateway.fast_lora.ops`, when:

- the platform is the CPU (other platforms have their own kernels),
- the installed vLLM is exactly `TESTED_VLLM_VERSION` (another one: a warning, vLLM's ops),
- `TUNEGATE_GATEWAY_FAST_LORA` is not switched off. It is read from the environment because
  the plugin runs inside vLLM's worker processes, which never see tunegate's config file.

`TUNEGATE_GATEWAY_FAST_LORA_CACHE_MIB` (default 2048) bounds the host memory that keeps each
adapter's fused matrices while it is out of the engine's slots (see `ops._StepMemo`).

This module imports only the standard library: vLLM imports it in every process, and the
rest of `gateway` (and torch, until `register` needs it) stays out of those processes.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from gateway._plugin_env import env_flag, env_whole_number

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_CACHE_MIB",
    "ENV_VAR",
    "OP_NAMES",
    "TESTED_VLLM_VERSION",
    "cache_budget",
    "enabled",
    "is_active",
    "register",
]

ENV_VAR = "TUNEGATE_GATEWAY_FAST_LORA"
CACHE_ENV_VAR = "TUNEGATE_GATEWAY_FAST_LORA_CACHE_MIB"
# 64 rank-16 adapters of the default model (about 19.5 MB each in float32) with room to
# spare: with more adapters than the budget holds, adapters taken round robin miss every time.
DEFAULT_CACHE_MIB = 2048
# The ops reproduce this release's torch_ops semantics, checked by the tests against it; a
# different release may have changed the ops or how punica_cpu calls them.
TESTED_VLLM_VERSION = "0.32.0"
OP_NAMES = (
    "bgmv_expand",
    "bgmv_expand_slice",
    "bgmv_shrink",
    "sgmv_expand",
    "sgmv_expand_slice",
    "sgmv_shrink",
)

# Under the `vllm` logger so that vLLM's own logging set-up prints it in its worker
# processes too, where nothing configures the root logger.
logger = logging.getLogger("vllm.tunegate.fast_lora")


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether the switch allows the plugin: on unless `ENV_VAR` says off.

    An unreadable value is an error rather than a guess, so a typo cannot silently change
    which ops serve traffic.
    """
    return env_flag(os.environ if env is None else env, ENV_VAR, default=True)


def cache_budget(env: Mapping[str, str] | None = None) -> int:
    """Bytes of fused adapter matrices kept across slots (`CACHE_ENV_VAR`, in MiB)."""
    env = os.environ if env is None else env
    mib = env_whole_number(env, CACHE_ENV_VAR, default=DEFAULT_CACHE_MIB, minimum=0, unit="MiB")
    return mib << 20


def is_active() -> bool:
    """Whether this process's punica_cpu currently runs the grouped ops."""
    import sys

    punica_cpu = sys.modules.get("vllm.lora.punica_wrapper.punica_cpu")
    if punica_cpu is None:
        return False
    return all(
        getattr(getattr(punica_cpu, name), "__module__", "") == f"{__name__}.ops"
        for name in OP_NAMES
    )


def register() -> None:
    """The `vllm.general_plugins` entry point; safe to call more than once per process."""
    if not enabled():
        logger.info("tunegate fast LoRA ops off (%s); vLLM's own punica ops are used.", ENV_VAR)
        return
    import vllm

    if vllm.__version__ != TESTED_VLLM_VERSION:
        logger.warning(
            "tunegate fast LoRA ops were tested with vLLM %s, this is vLLM %s: "
            "leaving vLLM's own punica ops in place.",
            TESTED_VLLM_VERSION,
            vllm.__version__,
        )
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        logger.debug("tunegate fast LoRA ops are for the CPU platform only; not installed.")
        return
    if is_active():
        return
    # Patch the names punica_cpu looked up at import, the narrowest point: torch_ops itself
    # (and anything else that imports it) keeps vLLM's originals.
    from vllm.lora.punica_wrapper import punica_cpu

    from . import ops
    from .linear import fuse_add_lora_linear

    for name in OP_NAMES:
        setattr(punica_cpu, name, getattr(ops, name))
    _hook_steps(punica_cpu.PunicaWrapperCPU, ops.new_step)
    from vllm.lora.model_manager import LoRAModelManager

    _hook_registration(LoRAModelManager, ops._step.forget_adapter)
    ops._step.adapter_budget = cache_budget()
    # After the hook: the fused path works only inside a hooked step (it memoises by it).
    fuse_add_lora_linear(punica_cpu.PunicaWrapperCPU)
    logger.info(
        "tunegate fast LoRA ops active: %s grouped by adapter, linear modules fused "
        "(set %s=0 to disable).",
        ", ".join(OP_NAMES),
        ENV_VAR,
    )


def _hook_registration(manager: type, forget: Callable[[object], None]) -> None:
    """Tell the ops when vLLM registers an adapter id, whose weights may then be new.

    Every registration (`LoRAModelManager.add_adapter`, the LRU manager's too) goes through
    `_add_adapter`; what the ops keep for an adapter across slots is forgotten there.
    """
    add = manager._add_adapter  # type: ignore[attr-defined]
    if getattr(add, "_tunegate_forget", False):
        return

    @functools.wraps(add)
    def _add_adapter(self: object, lora: Any) -> None:
        forget(lora.id)
        add(self, lora)

    _add_adapter._tunegate_forget = True  # type: ignore[attr-defined]
    manager._add_adapter = _add_adapter  # type: ignore[attr-defined]


def _hook_steps(wrapper: type, new_step: Callable[[tuple[object, ...] | None], None]) -> None:
    """Tell the ops when the wrapper has written a new step's index buffers.

    `update_metadata(mapping, lora_index_to_id, ...)` is the only writer of the buffers the
    ops get slices of; after it, the ops may memoise work by tensor address, and work on the
    slot weights for as long as the slot layout `lora_index_to_id` stays the same (see
    `ops._StepMemo`).
    """
    update = wrapper.update_metadata  # type: ignore[attr-defined]
    if getattr(update, "_tunegate_step_hook", False):
        return

    @functools.wraps(update)
    def update_metadata(self: object, *args: Any, **kwargs: Any) -> None:
        update(self, *args, **kwargs)
        layout = args[1] if len(args) > 1 else kwargs.get("lora_index_to_id")
        new_step(tuple(layout) if layout is not None else None)

    update_metadata._tunegate_step_hook = True  # type: ignore[attr-defined]
    wrapper.update_metadata = update_metadata  # type: ignore[attr-defined]
