"""Per-key requests and tokens per minute, on the `limits` library.

Requests use a moving window (exact: no 60 s span ever holds more than `rpm`); tokens use
the sliding-window counter (O(1) per hit however large `tpm` is; it weights the previous
window's count, like Cloudflare's limiter). A request's tokens are its prompt plus its
completion budget (`max_tokens`), charged when it is admitted: the engine cannot produce more
than that, and it is what OpenAI counts too. Each check is one synchronous call on the event
loop that tests and consumes together, so concurrent requests can never both take the last
unit.

Headers are OpenAI's: `x-ratelimit-limit-*`, `x-ratelimit-remaining-*`,
`x-ratelimit-reset-*` (a duration such as `1s`, `6m0s`, `20ms`), and `Retry-After` (whole
seconds) on a 429.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from gateway.auth.keys import ApiKey
from gateway.errors import RateLimitError

__all__ = ["RateLimits", "reset_duration"]


def reset_duration(seconds: float) -> str:
    """OpenAI's spelling of a reset time: `20ms`, `1.5s`, `6m0s`."""
    seconds = max(0.0, seconds)
    if seconds < 1.0:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    if seconds < 60.0:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{round(rest, 3):g}s"


class RateLimits:
    """The limit state of every key, in this process's memory (one gateway process)."""

    def __init__(self) -> None:
        storage = MemoryStorage()
        self._requests = MovingWindowRateLimiter(storage)
        self._tokens = SlidingWindowCounterRateLimiter(storage)
        self._items: dict[tuple[str, int], RateLimitItem] = {}

    def _item(self, kind: str, amount: int) -> RateLimitItem:
        item = self._items.get((kind, amount))
        if item is None:
            item = self._items[(kind, amount)] = RateLimitItemPerMinute(amount, namespace=kind)
        return item

    def take_request(self, key: ApiKey) -> dict[str, str]:
        """Count one request against `key`'s rpm; its headers, or RateLimitError."""
        if key.rpm is None:
            return {}
        item = self._item("requests", key.rpm)
        allowed = self._requests.hit(item, key.name)
        return self._outcome(self._requests, item, key, "requests", 1, allowed)

    def take_tokens(self, key: ApiKey, tokens: int) -> dict[str, str]:
        """Charge `tokens` against `key`'s tpm; its headers, or RateLimitError."""
        if key.tpm is None:
            return {}
        item = self._item("tokens", key.tpm)
        allowed = self._tokens.hit(item, key.name, cost=max(1, tokens))
        return self._outcome(self._tokens, item, key, "tokens", tokens, allowed)

    def _outcome(
        self,
        limiter: MovingWindowRateLimiter | SlidingWindowCounterRateLimiter,
        item: RateLimitItem,
        key: ApiKey,
        kind: str,
        requested: int,
        allowed: bool,
    ) -> dict[str, str]:
        stats = limiter.get_window_stats(item, key.name)
        wait_s = max(0.0, stats.reset_time - time.time())
        headers = {
            f"x-ratelimit-limit-{kind}": str(item.amount),
            f"x-ratelimit-remaining-{kind}": str(max(0, stats.remaining)),
            f"x-ratelimit-reset-{kind}": reset_duration(wait_s),
        }
        if allowed:
            return headers
        unit = "RPM" if kind == "requests" else "TPM"
        if requested > item.amount:
            hint = "This request alone is larger than the limit; lower max_tokens or the prompt."
        else:
            hint = f"Please try again in {reset_duration(wait_s)}."
        raise RateLimitError(
            f"Rate limit reached for key {key.name!r} on {kind} per min ({unit}): "
            f"Limit {item.amount}, Remaining {max(0, stats.remaining)}, Requested {requested}. "
            + hint,
            kind=kind,
            headers={**headers, "Retry-After": str(max(1, math.ceil(wait_s)))},
        )
