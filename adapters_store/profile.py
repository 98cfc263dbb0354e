"""The training profile in an artifact's card: what its traffic is compared against.

The tuner writes it at publish (`card["profile"]`); the gateway reads it to record, per
request, a category instead of the text (the normalised answer label, the share of prompt
tokens never seen in training), and the monitor compares a window of those records with it.
It lives with the store because the card is the contract between the two, and neither the
tuner nor the gateway may import the other.

Kept compact on purpose (a few KiB in the catalog row): label counts, a histogram of prompt
lengths over fixed bucket edges, and the set of token ids the training prompts used as a
zlib-compressed bitmap (vocabulary 49k -> 6 KiB raw, usually 1-3 KiB compressed).
"""

from __future__ import annotations

import base64
import bisect
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = [
    "LENGTH_EDGES",
    "OTHER",
    "PROFILE_VERSION",
    "TrainingProfile",
    "card_labels",
    "length_bucket",
    "length_histogram",
    "normalise_answer",
]

OTHER = "other"
PROFILE_VERSION = 1
# Upper bucket edges (inclusive) for prompt tokens per request: widths growing x1.5 and x2,
# because a drift that matters is "prompts got half again as long", not "three tokens longer".
LENGTH_EDGES: tuple[int, ...] = (
    16,
    24,
    32,
    48,
    64,
    96,
    128,
    192,
    256,
    384,
    512,
    768,
    1024,
    1536,
    2048,
    4096,
    8192,
)


def normalise_answer(text: str, labels: Sequence[str]) -> str:
    """The label an answer names, else "other": the same reading as the tuner's eval
    (exact label after trimming quotes and punctuation, else the earliest label mentioned)."""
    norm = text.strip().strip("`'\".:;!").lower()
    if norm in labels:
        return norm
    best: tuple[int, str] | None = None
    for variant in (norm, norm.replace(" ", "_")):
        for label in labels:
            pos = variant.find(label)
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, label)
    return best[1] if best else OTHER


def card_labels(card: Mapping[str, Any]) -> tuple[str, ...]:
    """The artifact's closed label set: its profile's (a task's, or inferred from the
    training answers), else the task labels older cards carry; () for a text task."""
    profile = card.get("profile")
    for source in (profile if isinstance(profile, Mapping) else {}, card):
        labels = source.get("labels")
        if isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels):
            return tuple(labels)
    return ()


def length_bucket(tokens: int) -> int:
    """The LENGTH_EDGES bucket of a prompt of `tokens` tokens (the last: longer than all)."""
    return bisect.bisect_left(LENGTH_EDGES, tokens)


def length_histogram(lengths: Iterable[int]) -> list[int]:
    """Counts per bucket of LENGTH_EDGES, plus one bucket for longer prompts."""
    counts = [0] * (len(LENGTH_EDGES) + 1)
    for n in lengths:
        counts[length_bucket(n)] += 1
    return counts


def _pack_ids(ids: Iterable[int], vocab_size: int) -> str:
    bits = np.zeros(vocab_size, dtype=bool)
    bits[np.fromiter(ids, dtype=np.int64)] = True
    return base64.b64encode(zlib.compress(np.packbits(bits).tobytes(), 9)).decode("ascii")


def _unpack_ids(packed: str, vocab_size: int) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(packed))
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:vocab_size].astype(bool)


@dataclass(frozen=True)
class TrainingProfile:
    """What the training data looked like, in the figures the monitor compares."""

    examples: int
    labels: tuple[str, ...]  # the closed label set; empty for text tasks
    label_counts: dict[str, int]  # training answers per label (OTHER for the rest)
    length_counts: list[int]  # prompt tokens per example, per LENGTH_EDGES bucket
    mean_prompt_tokens: float
    vocab_size: int
    seen: np.ndarray | None  # bool per token id: used by a training prompt
    # OOV share of held-out prompts (valid/test split): the level unseen but in-domain
    # traffic shows, so a live share is compared with this, not with 0.
    heldout_oov_share: float | None = None

    @classmethod
    def build(
        cls,
        prompts: Sequence[Sequence[int]],
        answers: Sequence[str],
        labels: Sequence[str],
        vocab_size: int,
        heldout: Sequence[Sequence[int]] = (),
    ) -> TrainingProfile:
        """From the token ids of each training prompt (as the gateway renders it) and the
        assistant's answer; `heldout` prompts set the baseline OOV share."""
        if not prompts:
            raise ValueError("a training profile needs at least one example")
        labels = tuple(labels)
        counts = Counter(normalise_answer(a, labels) for a in answers) if labels else Counter()
        seen = np.zeros(vocab_size, dtype=bool)
        for p in prompts:
            seen[np.asarray(p, dtype=np.int64)] = True
        profile = cls(
            examples=len(prompts),
            labels=labels,
            label_counts={k: counts[k] for k in (*labels, OTHER) if counts[k]},
            length_counts=length_histogram(len(p) for p in prompts),
            mean_prompt_tokens=float(np.mean([len(p) for p in prompts])),
            vocab_size=vocab_size,
            seen=seen,
        )
        shares = [x for x in (profile.oov_share(p) for p in heldout) if x is not None]
        if shares:
            profile = replace(profile, heldout_oov_share=float(np.mean(shares)))
        return profile

    def oov_share(self, prompt: Sequence[int]) -> float | None:
        """Share of the prompt's tokens that no training prompt used; None without a set."""
        if self.seen is None or not prompt:
            return None
        ids = np.asarray(prompt, dtype=np.int64)
        # Ids past the stored vocabulary (added tokens) were never seen either.
        inside = ids < self.vocab_size
        unseen = (~inside).sum() + (~self.seen[ids[inside]]).sum()
        return float(unseen) / len(ids)

    def to_card(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": PROFILE_VERSION,
            "examples": self.examples,
            "labels": list(self.labels),
            "label_counts": dict(self.label_counts),
            "length_edges": list(LENGTH_EDGES),
            "length_counts": list(self.length_counts),
            "mean_prompt_tokens": round(self.mean_prompt_tokens, 3),
            "vocab_size": self.vocab_size,
            "heldout_oov_share": self.heldout_oov_share,
        }
        if self.seen is not None:
            out["token_ids"] = _pack_ids(np.flatnonzero(self.seen), self.vocab_size)
        return out

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> TrainingProfile | None:
        """The card's profile, or None when it has none (published before profiles) or one
        this code cannot read: monitoring then reports what it can without it."""
        data = card.get("profile")
        if not isinstance(data, Mapping) or data.get("version") != PROFILE_VERSION:
            return None
        if list(data.get("length_edges", [])) != list(LENGTH_EDGES):
            return None
        try:
            vocab = int(data["vocab_size"])
            packed = data.get("token_ids")
            return cls(
                examples=int(data["examples"]),
                labels=tuple(str(x) for x in data.get("labels", ())),
                label_counts={str(k): int(v) for k, v in data.get("label_counts", {}).items()},
                length_counts=[int(x) for x in data["length_counts"]],
                mean_prompt_tokens=float(data["mean_prompt_tokens"]),
                vocab_size=vocab,
                seen=_unpack_ids(packed, vocab) if isinstance(packed, str) else None,
                heldout_oov_share=(
                    float(data["heldout_oov_share"])
                    if data.get("heldout_oov_share") is not None
                    else None
                ),
            )
        except (KeyError, TypeError, ValueError, zlib.error):
            return None
