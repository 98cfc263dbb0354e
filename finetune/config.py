"""Settings of the fine-tuning API and its worker (`finetune.*`, `TUNEGATE_FINETUNE_*`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["FinetuneConfig"]

# The `<org>` segment of `ft:<base>:<org>:<suffix>:<id>`: no colons, so names stay parseable.
_ORG_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class FinetuneConfig:
    """Files, jobs and the worker that runs them (`finetune.*`)."""

    organization: str = field(
        default="tunegate",
        metadata={"doc": "The <org> in fine_tuned_model names `ft:<base>:<org>:<suffix>:<id>`."},
    )
    max_file_bytes: int = field(
        default=512 * 1024 * 1024,
        metadata={"doc": "Largest upload accepted by POST /v1/files (bytes)."},
    )
    serve_worker: bool = field(
        default=True,
        metadata={"doc": "`tunegate serve` also runs `tunegate worker` (restarted if it dies)."},
    )
    poll_s: float = field(
        default=1.0, metadata={"doc": "How often an idle worker looks for queued jobs."}
    )
    default_epochs: int = field(
        default=3, metadata={"doc": 'n_epochs when a job says "auto" (OpenAI also uses 3).'}
    )
    default_batch_size: int = field(
        default=8, metadata={"doc": 'batch_size when a job says "auto".'}
    )
    base_learning_rate: float = field(
        default=1e-3,
        metadata={
            "doc": 'Learning rate that learning_rate_multiplier scales ("auto" = 1.0); '
            "1e-3 is what LoRA on the default model measured best."
        },
    )
    lora_rank: int = field(default=16, metadata={"doc": "LoRA rank of fine-tuning jobs."})
    save_steps: int = field(
        default=10, metadata={"doc": "Checkpoint (and checkpoint row) every N steps."}
    )
    max_steps: int = field(
        default=-1,
        metadata={"doc": "Cap on the steps of every job (-1: none); keeps demo jobs short."},
    )

    def __post_init__(self) -> None:
        if not _ORG_RE.match(self.organization):
            raise ValueError(
                f"finetune.organization must match {_ORG_RE.pattern}, got {self.organization!r}"
            )
        if self.max_file_bytes < 1:
            raise ValueError("finetune.max_file_bytes must be >= 1")
        if not 0 < self.poll_s <= 60:
            raise ValueError("finetune.poll_s must be in (0, 60]")
        if not 1 <= self.default_epochs <= 50:
            raise ValueError("finetune.default_epochs must be in 1..50")
        if not 1 <= self.default_batch_size <= 256:
            raise ValueError("finetune.default_batch_size must be in 1..256")
        if not 0 < self.base_learning_rate < 1:
            raise ValueError("finetune.base_learning_rate must be in (0, 1)")
        if not 1 <= self.lora_rank <= 64:
            raise ValueError("finetune.lora_rank must be in 1..64")
        if self.save_steps < 1:
            raise ValueError("finetune.save_steps must be >= 1")
        if self.max_steps != -1 and self.max_steps < 1:
            raise ValueError("finetune.max_steps must be -1 or >= 1")
