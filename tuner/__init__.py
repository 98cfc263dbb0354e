"""Domain data, fine-tuning recipes, training, distillation and evaluation."""

from tuner.base_models import DEFAULT_BASE_ID, TINY_BASE_ID, ensure_default, ensure_tiny

__all__ = ["DEFAULT_BASE_ID", "TINY_BASE_ID", "ensure_default", "ensure_tiny"]
