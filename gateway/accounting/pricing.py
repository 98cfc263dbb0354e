"""The price of a request: tokens x the price of the model that served it."""

from __future__ import annotations

from gateway.config import AccountingConfig, Price

__all__ = ["PriceBook"]


class PriceBook:
    """Looks a price up by exact version, then artifact name, then base model id, and
    falls back to the price derived from $/GPU-hour and throughput (see gateway.config)."""

    def __init__(self, config: AccountingConfig) -> None:
        self.default = config.default_price
        self._overrides = config.price_overrides()

    def price(self, artifact: str | None, base: str | None = None) -> Price:
        if artifact is not None:
            for key in (artifact, artifact.partition("@")[0]):
                if key in self._overrides:
                    return self._overrides[key]
        if base is not None and base in self._overrides:
            return self._overrides[base]
        return self.default

    def cost(
        self, artifact: str | None, base: str | None, prompt_tokens: int, completion_tokens: int
    ) -> float:
        return self.price(artifact, base).cost(prompt_tokens, completion_tokens)
