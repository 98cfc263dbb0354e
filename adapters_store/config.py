"""Where tunegate keeps its state, and the store's own settings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["StoreConfig", "default_home"]


def default_home() -> Path:
    """`$TUNEGATE_HOME`, else `~/.local/share/tunegate` (XDG data dir)."""
    env = os.environ.get("TUNEGATE_HOME")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return (base / "tunegate").resolve()


@dataclass
class StoreConfig:
    """Settings of the adapters store (`store.*` in the config file, `TUNEGATE_STORE_*`)."""

    max_lora_rank: int = field(
        default=64,
        metadata={"doc": "Largest LoRA rank accepted at publish (vLLM's max_lora_rank)."},
    )

    def __post_init__(self) -> None:
        if not 1 <= self.max_lora_rank <= 512:
            raise ValueError(f"store.max_lora_rank must be in 1..512, got {self.max_lora_rank}")
