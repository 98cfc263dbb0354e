"""Load generation against an OpenAI-compatible URL, and the cost report."""

__all__: list[str] = []
