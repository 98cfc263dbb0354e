"""`POST /v1/completions`."""

from gateway.completions.router import create_completion
from gateway.completions.serving import CompletionServing

__all__ = ["CompletionServing", "create_completion"]
