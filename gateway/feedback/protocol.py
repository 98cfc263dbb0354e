"""Request and response of `POST /v1/feedback`."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["MAX_CORRECTION_CHARS", "Feedback", "FeedbackRequest"]

# A corrected answer is one assistant turn; anything longer is a mistake or abuse.
MAX_CORRECTION_CHARS = 32_768


class FeedbackRequest(BaseModel):
    """`rating` is a number in [-1, 1]: -1 wrong/bad, 0 neutral, 1 right/good (a thumbs
    up/down maps to 1/-1; a 1..5 star scale maps to (stars - 3) / 2). `correction` is the
    answer the model should have given. At least one of the two is required."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(
        min_length=1, max_length=200, description="the x-request-id of the answered request"
    )
    rating: float | None = Field(default=None, ge=-1.0, le=1.0, description="-1 .. 1")
    correction: str | None = Field(
        default=None, min_length=1, max_length=MAX_CORRECTION_CHARS, description="the right answer"
    )

    @field_validator("rating")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("rating must be a finite number in [-1, 1]")
        return value

    @model_validator(mode="after")
    def _something(self) -> FeedbackRequest:
        if self.rating is None and self.correction is None:
            raise ValueError("give a rating (-1 .. 1), a correction, or both")
        return self


class Feedback(BaseModel):
    """One stored piece of feedback."""

    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["feedback"] = "feedback"
    request_id: str
    artifact: str | None  # the version that answered the request (`name@version`)
    rating: float | None
    correction: str | None
    created_at: int
