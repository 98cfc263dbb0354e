"""Files and fine-tuning jobs behind the HTTP routes: checks, state calls, response objects.

Calls are synchronous (SQLite, file copies); the routes run them in litestar's thread pool.
"""

from __future__ import annotations

import re
from typing import IO, TYPE_CHECKING, Any

from adapters_store.catalog import parse_reference
from adapters_store.errors import InvalidReferenceError
from finetune.hyper import HyperparameterError, resolve_hyperparameters
from finetune.names import SUFFIX_RE, store_name_for
from finetune.state import (
    CheckpointRow,
    EventRow,
    FileRow,
    FileTooLargeError,
    JobFinishedError,
    JobRow,
    JobState,
    NotFoundError,
    Page,
)
from gateway.errors import APIError, BadRequestError
from gateway.finetune.protocol import (
    Checkpoint,
    CheckpointMetrics,
    FileDeleted,
    FileObject,
    FineTuningJob,
    JobCreateRequest,
    JobError,
    JobEvent,
    JobMethod,
    ListPage,
)

if TYPE_CHECKING:
    from litestar import Request

    from tunegate.config import Settings

__all__ = ["FinetuneAPI", "NotFoundAPIError"]

_PURPOSES = ("fine-tune", "fine-tune-results", "batch", "user_data", "assistants", "vision")
_SAFE_KEY_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class NotFoundAPIError(APIError):
    status_code = 404
    type = "invalid_request_error"


class PayloadTooLargeError(APIError):
    status_code = 413
    type = "invalid_request_error"
    code = "file_too_large"


def owner_of(request: Request[Any, Any, Any]) -> str | None:
    """The caller's API key id, which an auth layer puts in the scope state; None without
    auth (then every file and job is visible, as with one implicit tenant)."""
    value = request.scope.get("state", {}).get("key_id")
    return value if isinstance(value, str) and _SAFE_KEY_ID.match(value) else None


def _page(rows: Page, convert: Any) -> ListPage:
    data = [convert(r) for r in rows.data]
    return ListPage(
        data=data,
        has_more=rows.has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


class FinetuneAPI:
    """What the routes call; one per app."""

    def __init__(self, settings: Settings, served_bases: list[str]) -> None:
        self.config = settings.finetune
        self.state = JobState(settings.home)
        self.served_bases = served_bases

    # ------------------------------------------------------------------ files

    @staticmethod
    def file_object(row: FileRow) -> FileObject:
        return FileObject(
            id=row.id,
            bytes=row.bytes,
            created_at=row.created_at,
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,  # type: ignore[arg-type]
            status_details=row.status_details,
        )

    def upload(
        self, source: IO[bytes], filename: str, purpose: str, owner: str | None
    ) -> FileObject:
        if purpose not in _PURPOSES:
            raise BadRequestError(
                f"purpose {purpose!r} is not supported; use one of {', '.join(_PURPOSES)}",
                param="purpose",
            )
        try:
            row = self.state.add_file(
                source, filename or "upload.jsonl", purpose, owner, self.config.max_file_bytes
            )
        except FileTooLargeError as exc:
            raise PayloadTooLargeError(str(exc), param="file") from None
        return self.file_object(row)

    def get_file(self, file_id: str, owner: str | None) -> FileRow:
        try:
            return self.state.get_file(file_id, owner)
        except NotFoundError as exc:
            raise NotFoundAPIError(str(exc), param="file_id") from None

    def list_files(
        self, owner: str | None, purpose: str | None, limit: int, after: str | None, order: str
    ) -> ListPage:
        try:
            rows = self.state.list_files(owner, purpose, limit, after, order)
        except NotFoundError as exc:
            raise BadRequestError(str(exc), param="after") from None
        return _page(rows, self.file_object)

    def delete_file(self, file_id: str, owner: str | None) -> FileDeleted:
        try:
            self.state.delete_file(file_id, owner)
        except NotFoundError as exc:
            raise NotFoundAPIError(str(exc), param="file_id") from None
        return FileDeleted(id=file_id, deleted=True)

    # ------------------------------------------------------------------ jobs

    def job_object(self, row: JobRow) -> FineTuningJob:
        return FineTuningJob(
            id=row.id,
            created_at=row.created_at,
            error=JobError(**row.error) if row.error else None,
            fine_tuned_model=row.fine_tuned_model,
            finished_at=row.finished_at,
            hyperparameters=row.hyperparameters,
            model=row.model,
            organization_id=self.config.organization,
            result_files=row.result_files,
            seed=row.seed,
            status=row.status,
            trained_tokens=row.trained_tokens,
            training_file=row.training_file,
            validation_file=row.validation_file,
            metadata=row.metadata,
            method=row.method,
        )

    def create_job(self, body: JobCreateRequest, owner: str | None) -> FineTuningJob:
        if body.model not in self.served_bases:
            raise BadRequestError(
                f"model {body.model!r} cannot be fine-tuned here: fine-tuning starts from a "
                f"base model this gateway serves ({', '.join(self.served_bases)})",
                param="model",
                code="model_not_available",
            )
        if body.integrations:
            raise BadRequestError("integrations are not supported", param="integrations")
        if body.suffix is not None and not SUFFIX_RE.match(body.suffix):
            raise BadRequestError(
                "suffix may hold letters, digits, '-', '_' and '.' only (up to 64)",
                param="suffix",
            )
        kind = body.method.type if body.method is not None else "supervised"
        if body.method is not None:
            self._check_method(body.method)
        if body.training_file is None and kind != "distillation":
            raise BadRequestError(
                "training_file is required (only method.type 'distillation' builds its "
                "training file from stored completions)",
                param="training_file",
            )
        hyper, where = body.hyperparameters, "hyperparameters"
        chosen = getattr(body.method, kind) if body.method is not None else None
        if chosen is not None and chosen.hyperparameters:
            if hyper is not None:
                raise BadRequestError(
                    f"give hyperparameters either in method.{kind} or at the top "
                    "level (deprecated), not both",
                    param="hyperparameters",
                )
            hyper, where = chosen.hyperparameters, f"method.{kind}.hyperparameters"
        try:
            resolved = resolve_hyperparameters(
                hyper.model_dump(exclude_none=True) if hyper else None, self.config, where
            )
        except HyperparameterError as exc:
            raise BadRequestError(str(exc), param=exc.param) from None
        for param, file_id in (
            ("training_file", body.training_file),
            ("validation_file", body.validation_file),
        ):
            if file_id is None:
                continue
            try:
                row = self.state.get_file(file_id, owner)
            except NotFoundError:
                raise BadRequestError(
                    f"invalid {param}: no such file {file_id!r}",
                    param=param,
                    code="invalid_file",
                ) from None
            if row.purpose != "fine-tune":
                raise BadRequestError(
                    f"invalid {param}: {file_id} was uploaded with purpose {row.purpose!r}, "
                    "not 'fine-tune'",
                    param=param,
                    code="invalid_file",
                )
        job = self.state.create_job(
            owner=owner,
            model=body.model,
            # Empty until the worker builds it (distillation without a training_file).
            training_file=body.training_file or "",
            validation_file=body.validation_file,
            suffix=body.suffix,
            seed=body.seed if body.seed is not None else 42,
            method={"type": kind, kind: self._method_settings(body.method, resolved)},
            metadata=body.metadata,
        )
        return self.job_object(job)

    def _check_method(self, method: JobMethod) -> None:
        """The type is one we run, its settings object is the only one given, and a
        distillation names a teacher the gateway can serve."""
        if method.type not in ("supervised", "distillation"):
            raise BadRequestError(
                f"method.type {method.type!r} is not supported; use 'supervised' or 'distillation'",
                param="method.type",
            )
        for other in ("supervised", "distillation", "dpo", "reinforcement"):
            if other != method.type and getattr(method, other) is not None:
                raise BadRequestError(
                    f"method.{other} is given but method.type is {method.type!r}",
                    param=f"method.{other}",
                )
        if method.type != "distillation":
            return
        if method.distillation is None:
            raise BadRequestError(
                "method.distillation is required when method.type is 'distillation': "
                'give at least its teacher, e.g. {"teacher": "telecom@prod", '
                '"metadata": {"task": "routing"}}',
                param="method.distillation",
            )
        teacher = method.distillation.teacher
        if teacher in self.served_bases or store_name_for(teacher) is not None:
            return
        try:
            parse_reference(teacher)
        except InvalidReferenceError as exc:
            raise BadRequestError(
                f"method.distillation.teacher {teacher!r} is neither a served base model "
                f"({', '.join(self.served_bases)}), a fine_tuned_model name nor a store "
                f"reference (name, name@3, name@alias): {exc}",
                param="method.distillation.teacher",
            ) from None

    @staticmethod
    def _method_settings(method: JobMethod | None, resolved: dict[str, Any]) -> dict[str, Any]:
        """The job's `method.<type>` object as stored and shown: the resolved
        hyperparameters, and for a distillation its teacher and metadata filter."""
        if method is None or method.distillation is None:
            return {"hyperparameters": resolved}
        return {
            "teacher": method.distillation.teacher,
            "metadata": method.distillation.metadata or {},
            "hyperparameters": resolved,
        }

    def get_job(self, job_id: str, owner: str | None) -> FineTuningJob:
        try:
            return self.job_object(self.state.get_job(job_id, owner))
        except NotFoundError as exc:
            raise NotFoundAPIError(str(exc), param="fine_tuning_job_id") from None

    def list_jobs(
        self, owner: str | None, limit: int, after: str | None, metadata: dict[str, str]
    ) -> ListPage:
        return _page(self.state.list_jobs(owner, limit, after, metadata), self.job_object)

    def cancel_job(self, job_id: str, owner: str | None) -> FineTuningJob:
        try:
            return self.job_object(self.state.cancel_job(job_id, owner))
        except NotFoundError as exc:
            raise NotFoundAPIError(str(exc), param="fine_tuning_job_id") from None
        except JobFinishedError as exc:
            raise BadRequestError(str(exc), code="job_not_cancellable") from None

    @staticmethod
    def event_object(row: EventRow) -> JobEvent:
        return JobEvent(
            id=row.id,
            created_at=row.created_at,
            level=row.level,  # type: ignore[arg-type]
            message=row.message,
            data=row.data,
            type=row.type,  # type: ignore[arg-type]
        )

    def list_events(
        self, job_id: str, owner: str | None, limit: int, after: str | None
    ) -> ListPage:
        try:
            return _page(self.state.list_events(job_id, owner, limit, after), self.event_object)
        except NotFoundError as exc:
            raise NotFoundAPIError(str(exc), param="fine_tuning_job_id") from None

    @staticmethod
    def checkpoint_object(row: CheckpointRow) -> Checkpoint:
        return Checkpoint(
            id=row.id,
            created_at=row.created_at,
            fine_tuned_model_checkpoint=row.fine_tuned_model_checkpoint,
            fine_tuning_job_id=row.job_id,
            metrics=CheckpointMetrics(**row.metrics),
            step_number=row.step,
        )

    def list_checkpoints(
        self, job_id: str, owner: str | None, limit: int, after: str | None
    ) -> ListPage:
        try:
            page = self.state.list_checkpoints(job_id, owner, limit, after)
        except NotFoundError as exc:
            raise NotFoundAPIError(str(exc), param="fine_tuning_job_id") from None
        return _page(page, self.checkpoint_object)
