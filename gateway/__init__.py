"""OpenAI-compatible server: the base model and many adapters on one vLLM engine."""

__all__: list[str] = []
