"""The cost arithmetic of the report, kept apart so it can be checked by hand.

Self-hosted: the machine costs `gpu_hour_usd` per hour and serves only this traffic, so the
answered requests of a phase cost that rate × the phase's wall time; per 1k requests that is
`gpu_hour_usd × duration_s / 3600 / ok × 1000`. It prices the throughput we measured at the
load we offered, not a vendor's peak figure.

Hosted generic model: the same prompts billed per token at list price, tokens counted with
OpenAI's cl100k_base encoding (offline copy): `(prompt × in + completion × out) / 1e6` per
request.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import tiktoken

from loadtests.prompts import Prompt
from loadtests.scenario import Pricing

__all__ = ["chat_tokens", "hosted_cost_per_1k", "self_hosted_cost_per_1k"]

# OpenAI's documented accounting for chat messages in cl100k models: every message costs
# 3 tokens of framing plus its role and content, and every reply is primed with 3 more.
_PER_MESSAGE = 3
_REPLY_PRIMING = 3


@lru_cache(maxsize=4)
def _encoding(name: str) -> tiktoken.Encoding:
    return tiktoken.get_encoding(name)


def chat_tokens(messages: Sequence[dict[str, Any]], encoding: str) -> int:
    enc = _encoding(encoding)
    total = _REPLY_PRIMING
    for m in messages:
        total += _PER_MESSAGE + len(enc.encode(str(m.get("role", ""))))
        total += len(enc.encode(str(m.get("content") or "")))
    return total


def self_hosted_cost_per_1k(pricing: Pricing, duration_s: float, ok: int) -> float | None:
    if ok <= 0 or duration_s <= 0:
        return None
    return pricing.gpu_hour_usd * duration_s / 3600 / ok * 1000


def hosted_cost_per_1k(
    pricing: Pricing, prompts: Sequence[Prompt], answers: Sequence[str]
) -> dict[str, float]:
    """Price `prompts` (and the answers they got) as a hosted generic model would bill them."""
    enc = _encoding(pricing.hosted_encoding)
    n = len(prompts)
    if n == 0:
        return {
            "prompt_tokens_per_request": 0.0,
            "completion_tokens_per_request": 0.0,
            "usd_per_1k": 0.0,
        }
    prompt_tokens = sum(chat_tokens(p.messages, pricing.hosted_encoding) for p in prompts) / n
    completion_tokens = sum(len(enc.encode(a)) for a in answers) / len(answers) if answers else 0.0
    per_request = (
        prompt_tokens * pricing.hosted_input_per_mtok
        + completion_tokens * pricing.hosted_output_per_mtok
    ) / 1e6
    return {
        "prompt_tokens_per_request": prompt_tokens,
        "completion_tokens_per_request": completion_tokens,
        "usd_per_1k": per_request * 1000,
    }
