"""Intake jobs: accepted with 202, processed by the workers, observed here."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.deps import authenticated_tenant, known_query_parameters
from api.errors import DATABASE_UNAVAILABLE, documented_errors, error_problem
from api.queue import enqueue_intake_job
from api.schemas import BookingIn, CancelIn, JobOut, RescheduleIn
from core import intake
from core.clock import utcnow
from core.config import WAIT_LIMIT_SECONDS, get_settings
from core.db import UnitOfWork

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["bookings"], dependencies=[Depends(known_query_parameters)])

WAIT_DESCRIPTION = (
    f"Seconds to hold the request until the job ends (at most {WAIT_LIMIT_SECONDS:g}): 201/200 when it"
    " succeeded."
)
IDEMPOTENCY_DESCRIPTION = (
    "Repeating a request with the same key returns the first job instead of booking twice."
)
SUBMIT_ERRORS = documented_errors(400, 401, 403, 404, 409, 413, 422, 500, 503)


def _submit_responses(waited_status: int) -> dict[int | str, dict[str, Any]]:
    """The problems, and the answer of a request whose `?wait=` saw its job succeed."""
    job_location = {"description": "The job", "schema": {"type": "string"}}
    waited_headers = (
        {
            "Location": {"description": "The appointment booked", "schema": {"type": "string"}},
            "Content-Location": job_location,
        }
        if waited_status == 201
        else {"Location": job_location}
    )
    return {
        **SUBMIT_ERRORS,
        202: {"description": "The job, accepted", "headers": {"Location": job_location}},
        waited_status: {
            "model": JobOut,
            "description": "With `?wait=`: the job succeeded; `result` has the appointment",
            "headers": waited_headers,
        },
    }


@dataclass(frozen=True)
class JobRequestOptions:
    """The `?wait=` and `Idempotency-Key` every request that becomes a job takes."""

    wait: float
    idempotency_key: str | None


async def job_request_options(
    wait: float = Query(0, ge=0, le=WAIT_LIMIT_SECONDS, description=WAIT_DESCRIPTION),
    idempotency_key: str | None = Header(
        None, min_length=1, max_length=255, description=IDEMPOTENCY_DESCRIPTION
    ),
) -> JobRequestOptions:
    # An operator may hold requests for less than the contract's limit (a proxy that times out sooner).
    return JobRequestOptions(min(wait, get_settings().booking_wait_max_seconds), idempotency_key)


def _job_url(job_id: uuid.UUID) -> str:
    return f"/v1/jobs/{job_id}"


def _appointment_url(job: intake.JobView) -> str | None:
    appointment_id = (job.result or {}).get("appointment_id")
    return f"/v1/appointments/{appointment_id}" if appointment_id else None


def _job_body(job: intake.JobView) -> dict[str, Any]:
    links = {"self": _job_url(job.job_id)}
    if appointment_url := _appointment_url(job):
        links["appointment"] = appointment_url
    return {**job.as_dict(), "links": links}


def _submit(tenant_id: uuid.UUID, kind: str, payload: dict[str, Any], key: str | None) -> intake.JobView:
    with UnitOfWork(tenant_id) as uow:
        job, _ = intake.submit(uow, kind, payload, key, utcnow(), enqueue_intake_job)
        return job


def _replayed(tenant_id: uuid.UUID, kind: str, payload: dict[str, Any], key: str) -> intake.JobView | None:
    with UnitOfWork(tenant_id, read_only=True) as uow:
        return intake.replayed_job(uow, kind, payload, key)


def _read(tenant_id: uuid.UUID, job_id: uuid.UUID) -> intake.JobView:
    with UnitOfWork(tenant_id, read_only=True) as uow:
        return intake.get_job(uow, job_id)


async def _answer(
    request: Request, tenant_id: uuid.UUID, job: intake.JobView, wait: float, success_status: int
) -> JSONResponse:
    if wait > 0 and not job.finished:
        # From the request's arrival: the time it queued for a thread counts against its wait too.
        arrived = getattr(request.state, "arrived", time.monotonic())
        deadline = arrived + wait
        await request.app.state.job_waiter.until_ended(job.job_id, deadline - time.monotonic())
        # One more look however the wait ended: a job that ended as the time ran out is answered as ended.
        try:
            job = await run_in_threadpool(_read, tenant_id, job.job_id)
        except DATABASE_UNAVAILABLE as error:
            # The job is recorded and sent: the request was accepted, and is answered so (202 with its id).
            # A 503 would tell the client to send it again: without an Idempotency-Key, a second booking.
            log.warning("could not read job %s at the end of its wait (%s); answered 202", job.job_id, error)
    # As GET /v1/jobs/{id} answers it (its response_model), so the two read the same.
    body = JobOut.model_validate(_job_body(job)).model_dump(mode="json")
    headers = {"Location": _job_url(job.job_id)}
    if job.status == "succeeded" and wait > 0:
        if success_status == 201:
            # 201's Location names what was created; the body is the job, which Content-Location names.
            headers = {"Location": _appointment_url(job), "Content-Location": _job_url(job.job_id)}
        return JSONResponse(body, status_code=success_status, headers=headers)
    if job.status == "failed" and wait > 0:
        return error_problem(job.http_status, job.error or {}, headers, job_id=str(job.job_id))
    return JSONResponse(body, status_code=202, headers=headers)


async def _accept(
    request: Request,
    tenant_id: uuid.UUID,
    kind: str,
    payload: dict[str, Any],
    options: JobRequestOptions,
    success_status: int,
) -> JSONResponse:
    # Counted once the request is valid (FastAPI checked it); a replay past the limit still gets its job.
    counter = request.app.state.submission_counter
    if not await counter.admit(tenant_id):
        key = options.idempotency_key
        replayed = key and await run_in_threadpool(_replayed, tenant_id, kind, payload, key)
        if not replayed:
            raise counter.refusal()
        return await _answer(request, tenant_id, replayed, options.wait, success_status)
    job = await run_in_threadpool(_submit, tenant_id, kind, payload, options.idempotency_key)
    return await _answer(request, tenant_id, job, options.wait, success_status)


@router.post(
    "/bookings",
    status_code=202,
    response_model=JobOut,
    responses=_submit_responses(201),
    summary="Request a booking",
)
async def create_booking(
    request: Request,
    body: BookingIn,
    options: JobRequestOptions = Depends(job_request_options),
    tenant_id: uuid.UUID = Depends(authenticated_tenant),
) -> JSONResponse:
    return await _accept(
        request,
        tenant_id,
        "booking",
        body.model_dump(mode="json", exclude_none=True),
        options,
        201,
    )


@router.post(
    "/appointments/{appointment_id}/reschedule",
    status_code=202,
    response_model=JobOut,
    responses=_submit_responses(200),
    summary="Move an appointment to another time",
)
async def reschedule_appointment(
    request: Request,
    appointment_id: uuid.UUID,
    body: RescheduleIn,
    options: JobRequestOptions = Depends(job_request_options),
    tenant_id: uuid.UUID = Depends(authenticated_tenant),
) -> JSONResponse:
    payload = {"appointment_id": str(appointment_id), **body.model_dump(mode="json", exclude_none=True)}
    return await _accept(request, tenant_id, "reschedule", payload, options, 200)


@router.post(
    "/appointments/{appointment_id}/cancel",
    status_code=202,
    response_model=JobOut,
    responses=_submit_responses(200),
    summary="Cancel an appointment",
)
async def cancel_appointment(
    request: Request,
    appointment_id: uuid.UUID,
    body: CancelIn | None = None,
    options: JobRequestOptions = Depends(job_request_options),
    tenant_id: uuid.UUID = Depends(authenticated_tenant),
) -> JSONResponse:
    payload = {
        "appointment_id": str(appointment_id),
        **(body.model_dump(mode="json", exclude_none=True) if body else {}),
    }
    return await _accept(request, tenant_id, "cancel", payload, options, 200)


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses=documented_errors(401, 404, 422, 503),
    summary="A job's status and outcome",
)
async def get_job(job_id: uuid.UUID, tenant_id: uuid.UUID = Depends(authenticated_tenant)) -> dict:
    return _job_body(await run_in_threadpool(_read, tenant_id, job_id))
