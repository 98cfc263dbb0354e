"""A distillation job's training file, built from the teacher's stored completions.

OpenAI's distillation is stored completions of a teacher -> a training file -> fine-tuning.
A job with `method.type: distillation` and no `training_file` gets that file here, when the
worker validates it: the chat completions sent with `store: true` to `teacher` (as
requested, the version that answered or its name) whose metadata has every pair of the
method's `metadata`, and - with API keys - sent with the key that created the job. The
conversion is `tunegate data from-stored`'s (`gateway.capture.examples.stored_examples`).
The file is stored like an upload (purpose `fine-tune`, owned by the job's key), so it is
listed in `/v1/files` and validated line by line like any other.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

from finetune.state import FileRow, JobRow, JobState

if TYPE_CHECKING:
    from tunegate.config import Settings

__all__ = ["NoStoredCompletionsError", "build_training_file", "needs_training_file"]


class NoStoredCompletionsError(LookupError):
    """Nothing matches the job's teacher and metadata; the message says what was looked for."""


def needs_training_file(job: JobRow) -> bool:
    """A distillation job created without a `training_file`, whose file is not built yet."""
    return job.method.get("type") == "distillation" and not job.training_file


def _wanted(teacher: str, metadata: dict[str, str], owner: str | None) -> str:
    pairs = ", ".join(f"{k}={v}" for k, v in metadata.items())
    return (
        f"teacher {teacher!r}"
        + (f" with metadata {pairs}" if pairs else "")
        + (f" sent with API key {owner!r}" if owner is not None else "")
    )


def build_training_file(settings: Settings, state: JobState, job: JobRow) -> tuple[FileRow, str]:
    """Store the job's training file and point the job at it; (the file, a one-line summary
    for the job's events). Raises `NoStoredCompletionsError` when nothing matches, and
    `FileTooLargeError` past `finetune.max_file_bytes` (nothing is kept then)."""
    from gateway.capture import CaptureStore, captures_path
    from gateway.capture.examples import stored_examples

    spec = job.method["distillation"]
    teacher: str = spec["teacher"]
    metadata: dict[str, str] = dict(spec.get("metadata") or {})
    wanted = _wanted(teacher, metadata, job.owner)
    path = captures_path(settings)
    if not path.is_file():
        raise NoStoredCompletionsError(
            f"no stored chat completions of {wanted}: nothing was ever stored ({path} does not "
            "exist); send chat completions to the teacher with store: true and metadata first"
        )
    store = CaptureStore(path)
    try:
        found = stored_examples(store, metadata, model=teacher, key_id=job.owner)
    finally:
        store.close()
    if not found.examples:
        unusable = sum(found.skipped.values())
        raise NoStoredCompletionsError(
            f"no stored chat completions of {wanted}"
            + (
                f" with a usable answer ({unusable} skipped: empty answer or no user turn)"
                if unusable
                else ""
            )
            + "; send chat completions to the teacher with store: true and this metadata "
            "(GET /v1/chat/completions?model=...&metadata[k]=v lists what is stored)"
        )
    body = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in found.examples)
    row = state.add_file(
        io.BytesIO(body.encode()),
        f"distillation-{job.id}.jsonl",
        "fine-tune",
        job.owner,
        settings.finetune.max_file_bytes,
    )
    state.set_columns(job.id, training_file=row.id)
    skipped = ", ".join(f"{n} skipped: {why}" for why, n in found.skipped.items())
    summary = (
        f"Built training file {row.id} from {len(found.examples)} stored completion(s) of "
        f"{wanted}" + (f" ({skipped})" if skipped else "")
    )
    return row, summary
