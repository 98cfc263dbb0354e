"""A capture with every field filled, for tests that write captures straight into the
store (the writer seam) instead of serving requests."""

from __future__ import annotations

import time
from typing import Any

from gateway.capture.store import Capture

__all__ = ["sample_capture"]


def sample_capture(request_id: str, **fields: Any) -> Capture:
    """A live stored chat completion of `telecom@1` answering "billing"; `fields` override."""
    now = time.time()
    values: dict[str, Any] = {
        "request_id": request_id,
        "created_at": now - 10,
        "expires_at": now + 3600,
        "key_id": None,
        "operation": "chat",
        "requested_model": "telecom@prod",
        "artifact": "telecom@1",
        "request": {"messages": [{"role": "user", "content": "my bill is wrong"}]},
        "system_prompt": None,
        "response": "billing",
        "finish_reason": "stop",
        "prompt_tokens": 5,
        "completion_tokens": 1,
        "stored": True,
        "metadata": {"task": "routing"},
    }
    values.update(fields)
    return Capture(**values)
