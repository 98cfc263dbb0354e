"""Drift of a window of traffic from the artifact's training profile.

Label tasks: the mix of answer labels (the gateway's per-request category, "other" for an
answer outside the label set) against the training answers' mix, as a Jensen-Shannon
divergence. Text tasks: the prompt-length histogram against the training prompts' (JS again),
and the mean share of prompt tokens no training prompt used against the held-out data's.
JS is taken in base 2, so it lies in [0, 1]: 0 for the same mix, 1 for disjoint ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.distance import jensenshannon

from adapters_store.profile import OTHER, TrainingProfile
from gateway.monitoring.config import MonitorConfig

__all__ = ["LabelDrift", "TextDrift", "js_divergence", "label_drift", "text_drift"]


def js_divergence(p: ArrayLike, q: ArrayLike) -> float:
    """Jensen-Shannon divergence (base 2) of two count or probability vectors."""
    a, b = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if a.shape != b.shape or a.sum() <= 0 or b.sum() <= 0:
        raise ValueError("js_divergence needs two non-empty vectors of the same length")
    # scipy gives the distance, the square root of the divergence; it normalises both.
    return float(jensenshannon(a, b, base=2) ** 2)


@dataclass(frozen=True)
class LabelDrift:
    answers: int  # answered requests with a label category in the window
    shares: dict[str, float]  # live share per label (and "other")
    expected: dict[str, float]  # training share per label (and "other")
    divergence: float | None  # None without answers
    flagged: bool


@dataclass(frozen=True)
class TextDrift:
    requests: int
    mean_prompt_tokens: float | None
    training_mean_prompt_tokens: float
    length_ratio: float | None  # live mean / training mean
    length_divergence: float | None
    oov_share: float | None  # mean over requests that recorded one
    baseline_oov_share: float  # held-out data's share (0 without held-out data)
    oov_shift: float | None  # oov_share - baseline
    flagged: bool


def label_drift(
    counts: Mapping[str, int], profile: TrainingProfile, config: MonitorConfig
) -> LabelDrift:
    """The answer mix `counts` (label -> answers) against the training labels."""
    keys = [*profile.labels, OTHER]
    live = np.array([counts.get(k, 0) for k in keys], dtype=float)
    train = np.array([profile.label_counts.get(k, 0) for k in keys], dtype=float)
    n = int(live.sum())
    divergence = js_divergence(live, train) if n and train.sum() else None
    return LabelDrift(
        answers=n,
        shares={k: float(v / n) for k, v in zip(keys, live, strict=True)} if n else {},
        expected={k: float(v / train.sum()) for k, v in zip(keys, train, strict=True)},
        divergence=divergence,
        flagged=divergence is not None
        and n >= config.min_requests
        and divergence >= config.label_threshold,
    )


def text_drift(
    length_counts: Sequence[int],
    prompt_tokens: int,
    oov_share: float | None,
    oov_requests: int,
    profile: TrainingProfile,
    config: MonitorConfig,
) -> TextDrift:
    """A window's prompts against the training prompts: their lengths (histogram over
    LENGTH_EDGES, and the tokens in all) and their mean OOV share over `oov_requests`."""
    n = int(sum(length_counts))
    mean = prompt_tokens / n if n else None
    length_div = js_divergence(length_counts, profile.length_counts) if n else None
    baseline = profile.heldout_oov_share or 0.0
    shift = oov_share - baseline if oov_share is not None else None
    flagged = n >= config.min_requests and (
        (length_div is not None and length_div >= config.length_threshold)
        or (
            shift is not None
            and oov_requests >= config.min_requests
            and shift >= config.oov_threshold
        )
    )
    return TextDrift(
        requests=n,
        mean_prompt_tokens=mean,
        training_mean_prompt_tokens=profile.mean_prompt_tokens,
        length_ratio=mean / profile.mean_prompt_tokens
        if mean is not None and profile.mean_prompt_tokens
        else None,
        length_divergence=length_div,
        oov_share=oov_share,
        baseline_oov_share=baseline,
        oov_shift=shift,
        flagged=bool(flagged),
    )
