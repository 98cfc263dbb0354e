"""OpenAI's files and fine-tuning endpoints; jobs run in `tunegate worker` (see `finetune`)."""

from gateway.finetune.router import FINETUNE_ROUTES
from gateway.finetune.serving import FinetuneAPI

__all__ = ["FINETUNE_ROUTES", "FinetuneAPI"]
