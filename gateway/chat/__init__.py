"""`POST /v1/chat/completions`."""

from gateway.chat.router import create_chat_completion
from gateway.chat.serving import ChatServing

__all__ = ["ChatServing", "create_chat_completion"]
