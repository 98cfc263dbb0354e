"""HTTP binding of OpenAI's files and fine-tuning endpoints (`client.files`, `.fine_tuning`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, delete, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body, Parameter
from litestar.response import File

from gateway._responses import READ_ERRORS
from gateway.finetune.protocol import (
    FileDeleted,
    FileObject,
    FineTuningJob,
    JobCreateRequest,
    ListPage,
)
from gateway.finetune.serving import FinetuneAPI, owner_of

__all__ = ["FINETUNE_ROUTES", "MAX_UPLOAD_BODY"]

# The HTTP body ceiling (litestar reads a multipart body before the handler runs); the real
# limit is finetune.max_file_bytes, enforced while the file is copied.
MAX_UPLOAD_BODY = 1 << 30
_ERRORS = {**READ_ERRORS, 404: READ_ERRORS[400]}


def _api(request: Request[Any, Any, Any]) -> FinetuneAPI:
    return request.app.state.finetune  # type: ignore[no-any-return]


@dataclass
class FileUpload:
    file: UploadFile
    purpose: str


@post(
    "/v1/files",
    status_code=200,
    request_max_body_size=MAX_UPLOAD_BODY,
    sync_to_thread=True,
    summary="Upload a file (JSONL for fine-tuning)",
    responses=_ERRORS,
    tags=["files"],
)
def create_file(
    request: Request[Any, Any, Any],
    data: Annotated[FileUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
) -> FileObject:
    source = data.file.file
    source.seek(0)
    return _api(request).upload(source, data.file.filename, data.purpose, owner_of(request))


@get("/v1/files", sync_to_thread=True, summary="List files", responses=_ERRORS, tags=["files"])
def list_files(
    request: Request[Any, Any, Any],
    purpose: str | None = None,
    limit: int = Parameter(default=10000, ge=1, le=10000),
    after: str | None = None,
    order: str = Parameter(default="desc", pattern="^(asc|desc)$"),
) -> ListPage:
    return _api(request).list_files(owner_of(request), purpose, limit, after, order)


@get(
    "/v1/files/{file_id:str}",
    sync_to_thread=True,
    summary="Retrieve a file's metadata",
    responses=_ERRORS,
    tags=["files"],
)
def retrieve_file(file_id: str, request: Request[Any, Any, Any]) -> FileObject:
    api = _api(request)
    return api.file_object(api.get_file(file_id, owner_of(request)))


@get(
    "/v1/files/{file_id:str}/content",
    sync_to_thread=True,
    summary="Download a file's content",
    responses=_ERRORS,
    tags=["files"],
)
def file_content(file_id: str, request: Request[Any, Any, Any]) -> File:
    api = _api(request)
    row = api.get_file(file_id, owner_of(request))
    return File(
        path=api.state.file_path(row.id),
        filename=row.filename,
        media_type="application/octet-stream",
    )


@delete(
    "/v1/files/{file_id:str}",
    status_code=200,
    sync_to_thread=True,
    summary="Delete a file",
    responses=_ERRORS,
    tags=["files"],
)
def delete_file(file_id: str, request: Request[Any, Any, Any]) -> FileDeleted:
    return _api(request).delete_file(file_id, owner_of(request))


@post(
    "/v1/fine_tuning/jobs",
    status_code=200,
    sync_to_thread=True,
    summary="Create a fine-tuning job",
    responses=_ERRORS,
    tags=["fine-tuning"],
)
def create_job(request: Request[Any, Any, Any], data: JobCreateRequest) -> FineTuningJob:
    capturer = getattr(request.app.state, "capturer", None)
    if data.method is not None and data.method.type == "distillation" and capturer is not None:
        # Read-your-writes: completions stored just before the job are in its training file.
        capturer.flush()
    return _api(request).create_job(data, owner_of(request))


@get(
    "/v1/fine_tuning/jobs",
    sync_to_thread=True,
    summary="List fine-tuning jobs, newest first",
    responses=_ERRORS,
    tags=["fine-tuning"],
)
def list_jobs(
    request: Request[Any, Any, Any],
    after: str | None = None,
    limit: int = Parameter(default=20, ge=1, le=100),
) -> ListPage:
    # OpenAI filters by `metadata[key]=value` query parameters.
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    return _api(request).list_jobs(owner_of(request), limit, after, metadata)


@get(
    "/v1/fine_tuning/jobs/{job_id:str}",
    sync_to_thread=True,
    summary="Retrieve a fine-tuning job",
    responses=_ERRORS,
    tags=["fine-tuning"],
)
def retrieve_job(job_id: str, request: Request[Any, Any, Any]) -> FineTuningJob:
    return _api(request).get_job(job_id, owner_of(request))


@post(
    "/v1/fine_tuning/jobs/{job_id:str}/cancel",
    status_code=200,
    sync_to_thread=True,
    summary="Cancel a fine-tuning job",
    responses=_ERRORS,
    tags=["fine-tuning"],
)
def cancel_job(job_id: str, request: Request[Any, Any, Any]) -> FineTuningJob:
    return _api(request).cancel_job(job_id, owner_of(request))


@get(
    "/v1/fine_tuning/jobs/{job_id:str}/events",
    sync_to_thread=True,
    summary="A job's events, newest first",
    responses=_ERRORS,
    tags=["fine-tuning"],
)
def list_events(
    job_id: str,
    request: Request[Any, Any, Any],
    after: str | None = None,
    limit: int = Parameter(default=20, ge=1, le=1000),
) -> ListPage:
    return _api(request).list_events(job_id, owner_of(request), limit, after)


@get(
    "/v1/fine_tuning/jobs/{job_id:str}/checkpoints",
    sync_to_thread=True,
    summary="A job's checkpoints, newest first",
    responses=_ERRORS,
    tags=["fine-tuning"],
)
def list_checkpoints(
    job_id: str,
    request: Request[Any, Any, Any],
    after: str | None = None,
    limit: int = Parameter(default=10, ge=1, le=100),
) -> ListPage:
    return _api(request).list_checkpoints(job_id, owner_of(request), limit, after)


FINETUNE_ROUTES = [
    create_file,
    list_files,
    retrieve_file,
    file_content,
    delete_file,
    create_job,
    list_jobs,
    retrieve_job,
    cancel_job,
    list_events,
    list_checkpoints,
]
