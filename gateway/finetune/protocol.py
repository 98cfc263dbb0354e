"""The OpenAI files and fine-tuning surface: request and response models.

Field names and order follow the `openai` client's types (`types/file_object.py`,
`types/fine_tuning/*.py`), so the official client parses every answer unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.protocol import check_metadata

__all__ = [
    "Checkpoint",
    "CheckpointMetrics",
    "DistillationMethod",
    "FileDeleted",
    "FileObject",
    "FineTuningJob",
    "JobCreateRequest",
    "JobError",
    "JobEvent",
    "JobHyperparameters",
    "JobMethod",
    "ListPage",
    "SupervisedMethod",
]

Auto = Literal["auto"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- files


class FileObject(_Response):
    id: str
    bytes: int
    created_at: int
    filename: str
    object: Literal["file"] = "file"
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(_Response):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class ListPage(_Response):
    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


# ----------------------------------------------------------------------------- jobs


class JobHyperparameters(BaseModel):
    """`"auto"` or a number each; ranges are checked when the job is created."""

    model_config = ConfigDict(extra="forbid")

    batch_size: Auto | int | None = None
    learning_rate_multiplier: Auto | float | None = None
    n_epochs: Auto | int | None = None


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: JobHyperparameters | None = None


class DistillationMethod(BaseModel):
    """tunegate's extension, shaped like `supervised`: train on the stored completions
    (`store: true`) of `teacher` whose metadata has every pair of `metadata`."""

    model_config = ConfigDict(extra="forbid")

    teacher: str = Field(min_length=1, max_length=256)
    metadata: dict[str, str] | None = None
    hyperparameters: JobHyperparameters | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)


class JobMethod(BaseModel):
    # dpo / reinforcement are accepted by the schema and refused with a clear message.
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "distillation", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    distillation: DistillationMethod | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


class JobCreateRequest(_Request):
    model: str = Field(min_length=1, max_length=256)
    # Required except for `distillation`, which builds it from stored completions.
    training_file: str | None = Field(default=None, min_length=1, max_length=128)
    hyperparameters: JobHyperparameters | None = None  # deprecated in favour of `method`
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    method: JobMethod | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    suffix: str | None = Field(default=None, max_length=64)
    validation_file: str | None = Field(default=None, max_length=128)


class JobError(_Response):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(_Response):
    id: str
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = None


class JobEvent(_Response):
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] | None = None


class CheckpointMetrics(_Response):
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None


class Checkpoint(_Response):
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    step_number: int
