"""OpenAI-style fine-tuning jobs: uploaded files, a durable job queue, and the worker.

`finetune.state` is shared by the gateway (which serves the HTTP API in `gateway.finetune`)
and the worker process (`finetune.worker`, which trains with `tuner` and publishes to
`adapters_store`). It lives in neither: the gateway must not import torch, the tuner must
not import litestar, and both need the same job table.
"""

from finetune.config import FinetuneConfig
from finetune.names import fine_tuned_model_name, store_name_for
from finetune.state import JobState, NotFoundError

__all__ = ["FinetuneConfig", "JobState", "NotFoundError", "fine_tuned_model_name", "store_name_for"]
