"""`GET /v1/usage`: accounting aggregates."""

from gateway.usage.router import get_usage

__all__ = ["get_usage"]
