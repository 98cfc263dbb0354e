"""Ids and model names of the fine-tuning API, and how `ft:` names map to store references.

OpenAI names a job's result `ft:<base>:<org>:<suffix>:<id>`; store names cannot hold colons.
The mapping is deterministic both ways without a lookup table: `<id>` is the job id's random
part and the artifact is published as `ft-<id>`, with the full `ft:` name in its card. The
gateway parses the `<id>`, resolves `ft-<id>` and serves it only when the card names exactly
the requested model, so a forged `ft:other-base:x:y:<id>` is a 404, not an alias.
"""

from __future__ import annotations

import re
import secrets

__all__ = [
    "FT_PREFIX",
    "SUFFIX_RE",
    "checkpoint_model_name",
    "fine_tuned_model_name",
    "new_id",
    "store_name_for",
]

FT_PREFIX = "ft:"
# OpenAI allows up to 64 characters; colons would make the name ambiguous.
SUFFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")
_TOKEN_RE = re.compile(r"^[0-9a-f]{24}$")
_JOB_PREFIX = "ftjob-"


def new_id(prefix: str) -> str:
    """`file-…`, `ftjob-…`, `ftevent-…`, `ftckpt-…`: 96 random bits, lowercase hex."""
    return f"{prefix}-{secrets.token_hex(12)}"


def _token(job_id: str) -> str:
    token = job_id.removeprefix(_JOB_PREFIX)
    if not job_id.startswith(_JOB_PREFIX) or not _TOKEN_RE.match(token):
        raise ValueError(f"not a fine-tuning job id: {job_id!r}")
    return token


def fine_tuned_model_name(base: str, organization: str, suffix: str | None, job_id: str) -> str:
    return f"{FT_PREFIX}{base}:{organization}:{suffix or ''}:{_token(job_id)}"


def checkpoint_model_name(fine_tuned_model: str, step: int) -> str:
    return f"{fine_tuned_model}:ckpt-step-{step}"


def store_name_for(model: str) -> str | None:
    """The store artifact that may hold `model` (`ft:...:<id>` or a job id), else None."""
    if model.startswith(_JOB_PREFIX):
        token = model.removeprefix(_JOB_PREFIX)
    elif model.startswith(FT_PREFIX):
        parts = model.split(":")
        if len(parts) != 5:
            return None
        token = parts[4]
    else:
        return None
    return f"ft-{token}" if _TOKEN_RE.match(token) else None
