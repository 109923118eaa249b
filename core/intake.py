"""Intake jobs: every booking, reschedule or cancel request is recorded before it is queued.

The life cycle (DESIGN §3): `submit` writes the row and, only after the commit, hands the id to the
queue. `run` processes it once (a second delivery finds the outcome and returns it) and writes the
outcome in the same transaction as the booking. `claim_stale` lets the sweeper re-queue jobs that the
queue lost, so an accepted request is never dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert

from core import booking
from core import logging as app_logging
from core.db import UnitOfWork
from core.errors import Conflict, DomainError, NotFound
from core.models import Appointment, IntakeJob

log = logging.getLogger(__name__)

Enqueue = Callable[[uuid.UUID, str], None]


class EnqueueFailed(Exception):
    """The broker could not take a job (down, or not answering); the job stays `queued` for the sweeper."""


FINISHED = ("succeeded", "failed")
# `run` fails a job started more often than this as it starts (`intake_jobs.attempts` counts the starts).
# A delivery whose job kills its worker process is handed back by the broker at once
# (reject_on_worker_lost) and would loop forever; the cap leaves room for the worker's transient retries
# (JobTask.max_retries, each a new start) and re-sends.
RUN_FAILS_AFTER_STARTS = 15
# The longest wait between two sends of a queued job (see claim_stale): a send lost while the broker
# refused messages must not leave the job waiting as long again after the broker is back.
MAX_RESEND_INTERVAL = timedelta(minutes=15)
INTERNAL_ERROR = {
    "code": "internal_error",
    "message": "The request could not be processed; please try again.",
}


@dataclass(frozen=True)
class JobKind:
    """How a kind of job is checked before it is recorded (`validate`, with the time of the request), and
    done (`handle`, with the time it runs and the time it was asked for: the change window of a cancellation
    or a move is judged when the client asked, not when a worker got to it)."""

    validate: Callable[[UnitOfWork, dict[str, Any], datetime], None]
    handle: Callable[[UnitOfWork, dict[str, Any], datetime, datetime], booking.BookedAppointment]


def _validate_booking(uow: UnitOfWork, payload: dict[str, Any], now: datetime) -> None:
    booking.validate_request(uow, booking.BookingRequest.from_payload(payload), now)


def _handle_booking(
    uow: UnitOfWork, payload: dict[str, Any], now: datetime, requested_at: datetime
) -> booking.BookedAppointment:
    # A slot is judged when it is booked: it must still be free and far enough ahead then.
    return booking.book(uow, booking.BookingRequest.from_payload(payload), now)


def _validate_cancel(uow: UnitOfWork, payload: dict[str, Any], now: datetime) -> None:
    uow.get(Appointment, payload["appointment_id"], code="appointment_not_found", what="Appointment")


def _move(payload: dict[str, Any]) -> tuple[uuid.UUID, datetime, tuple[uuid.UUID, ...]]:
    """A reschedule payload's appointment, new start and chosen resources."""
    return (
        uuid.UUID(payload["appointment_id"]),
        datetime.fromisoformat(payload["start"]),
        tuple(uuid.UUID(r) for r in payload.get("resource_ids") or ()),
    )


def _validate_reschedule(uow: UnitOfWork, payload: dict[str, Any], now: datetime) -> None:
    appointment_id, start, resource_ids = _move(payload)
    booking.validate_reschedule(uow, appointment_id, start, now, resource_ids)


def _handle_reschedule(
    uow: UnitOfWork, payload: dict[str, Any], now: datetime, requested_at: datetime
) -> booking.BookedAppointment:
    appointment_id, start, resource_ids = _move(payload)
    return booking.reschedule(uow, appointment_id, start, now, resource_ids, requested_at=requested_at)


def _handle_cancel(
    uow: UnitOfWork, payload: dict[str, Any], now: datetime, requested_at: datetime
) -> booking.BookedAppointment:
    appointment_id = uuid.UUID(payload["appointment_id"])
    return booking.cancel(uow, appointment_id, payload.get("reason"), now, requested_at=requested_at)


KINDS: dict[str, JobKind] = {
    "booking": JobKind(_validate_booking, _handle_booking),
    "vapi_booking": JobKind(_validate_booking, _handle_booking),
    "reschedule": JobKind(_validate_reschedule, _handle_reschedule),
    "cancel": JobKind(_validate_cancel, _handle_cancel),
}


@dataclass(frozen=True)
class JobView:
    job_id: uuid.UUID
    kind: str
    status: str
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, job: Any) -> JobView:
        """From an IntakeJob, or a row with the same columns."""
        return cls(job.id, job.kind, job.status, job.result, job.error, job.created_at, job.finished_at)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "job_id": str(self.job_id),
            "kind": self.kind,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }
        if self.result is not None:
            body["result"] = self.result
        if self.error is not None:
            body["error"] = {name: value for name, value in self.error.items() if name != "http_status"}
        return body

    @property
    def http_status(self) -> int:
        """The status the API gives this job's error when it answers it directly (?wait=)."""
        return (self.error or {}).get("http_status", 500)


def canonical_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as it is stored and hashed, so that one request written two ways is one request: its start
    in UTC (a client that retries in UTC what it first sent in local time), its `resource_ids` sorted (a set
    of resources, each serving in its own role: their order means nothing), and no `resource_ids` for an
    empty list (no preference, as when it is left out). A start that cannot be read stays as it came, for
    the validation to refuse."""
    resource_ids = payload.get("resource_ids")
    if resource_ids == []:
        payload = {name: value for name, value in payload.items() if name != "resource_ids"}
    elif isinstance(resource_ids, list) and all(isinstance(resource_id, str) for resource_id in resource_ids):
        payload = {**payload, "resource_ids": sorted(set(resource_ids))}
    return _start_in_utc(payload)


def _start_in_utc(payload: dict[str, Any]) -> dict[str, Any]:
    start = payload.get("start")
    if not isinstance(start, str):
        return payload
    try:
        instant = datetime.fromisoformat(start)
        if instant.tzinfo is None:
            return payload
        return {**payload, "start": instant.astimezone(UTC).isoformat()}
    except (ValueError, OverflowError):
        return payload


def request_hash(kind: str, payload: dict[str, Any]) -> str:
    canonical = json.dumps({"kind": kind, "payload": payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit(
    uow: UnitOfWork,
    kind: str,
    payload: dict[str, Any],
    idempotency_key: str | None,
    now: datetime,
    enqueue: Enqueue,
    queue: str = "bookings",
) -> tuple[JobView, bool]:
    """Record a job and commit it; queue it after the commit. Returns (job, created).

    A repeated idempotency key with the same request returns the first job, whatever has changed
    since (a replay of a booking made yesterday for today is still that booking); with another request
    it is a conflict. New requests are validated, and an invalid one raises before anything is written.
    """
    try:
        if idempotency_key is not None:
            replayed = replayed_job(uow, kind, payload, idempotency_key)
            if replayed is not None:
                return replayed, False
        payload = canonical_payload(payload)
        digest = request_hash(kind, payload)
        KINDS[kind].validate(uow, payload, now)
    except DomainError:
        # Refused before anything was written: a COMMIT all the same keeps the connection's prepared
        # statements (see UnitOfWork.__exit__).
        uow.commit()
        raise
    job = uow.session.scalar(
        insert(IntakeJob)
        .values(
            id=uuid.uuid4(),
            tenant_id=uow.tenant_id,
            kind=kind,
            queue=queue,
            idempotency_key=idempotency_key,
            request_hash=digest,
            payload=payload,
            status="queued",
            created_at=now,
            enqueued_at=now,
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
        .returning(IntakeJob)
    )
    if job is None:  # the same key arrived twice at once, and the other request's row won
        return _replay(uow, idempotency_key, {digest}), False
    # Read before the commit: a read after it would open a transaction that the unit of work then rolls back,
    # dropping the connection's prepared statements (see UnitOfWork.__exit__).
    view, job_id = JobView.from_row(job), job.id
    uow.after_commit(lambda: _enqueue_safely(enqueue, job_id, queue))
    uow.commit()
    return view, True


def replayed_job(uow: UnitOfWork, kind: str, payload: dict[str, Any], idempotency_key: str) -> JobView | None:
    """The job an earlier request with this key and body created (a conflict if the body differs), or None."""
    # Jobs recorded before starts were stored in UTC hold the hash of the body as it was sent, those recorded
    # before an empty resource_ids was dropped (both 2026-11-27) the hash with it, and those recorded before
    # resource_ids were sorted (2026-11-28) the hash of them in the order sent: the same body sent again is
    # still the same request.
    digests = {
        request_hash(kind, canonical_payload(payload)),
        request_hash(kind, _start_in_utc(payload)),
        request_hash(kind, payload),
    }
    return _replay(uow, idempotency_key, digests)


def _replay(uow: UnitOfWork, idempotency_key: str, digests: set[str]) -> JobView | None:
    existing = uow.session.scalar(
        select(IntakeJob).where(
            IntakeJob.tenant_id == uow.tenant_id, IntakeJob.idempotency_key == idempotency_key
        )
    )
    if existing is None:
        return None
    if existing.request_hash not in digests:
        raise Conflict(
            "This Idempotency-Key was already used for a different request.", code="idempotency_key_reused"
        )
    return JobView.from_row(existing)


def _enqueue_safely(enqueue: Enqueue, job_id: uuid.UUID, queue: str) -> None:
    # The job is committed: if the broker is down now, the sweeper queues it later.
    try:
        enqueue(job_id, queue)
    except EnqueueFailed as error:
        # One line a request: during an outage every request lands here, and the cause is the same.
        log.warning("could not enqueue job %s (%s); the sweeper will retry", job_id, error)
    except Exception:
        log.exception("could not enqueue job %s (a defect, not the broker); the sweeper will retry", job_id)


def get_job(uow: UnitOfWork, job_id: uuid.UUID | str) -> JobView:
    key = uow.id_of(IntakeJob, job_id, code="job_not_found", what="Job")
    # One SELECT, which also overwrites a copy the session holds from before a commit (submit, run).
    row = uow.session.get(IntakeJob, key, populate_existing=True)
    return JobView.from_row(uow.visible(IntakeJob, job_id, row, code="job_not_found", what="Job"))


# The runner's own statements are on the table, not the mapped class: through the session, an ORM-enabled
# UPDATE goes through the bulk-update machinery and an entity load through the identity map, ~0.5-1 ms of
# Python each per job that the runner has no use for.
_jobs = IntakeJob.__table__
_MARK_RUNNING = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("job_id"), _jobs.c.status.in_(("queued", "running")))
    .values(status="running", started_at=bindparam("now"), attempts=_jobs.c.attempts + 1)
    .returning(_jobs.c.tenant_id, _jobs.c.attempts)
)
_LOCKED = (
    select(
        _jobs.c.id,
        _jobs.c.kind,
        _jobs.c.status,
        _jobs.c.payload,
        _jobs.c.result,
        _jobs.c.error,
        _jobs.c.created_at,
        _jobs.c.finished_at,
    )
    .where(_jobs.c.id == bindparam("job_id"))
    .with_for_update()
)
# When the job ended: `now` is when its run began (the time the rules were judged at), and a run may then
# wait seconds for a busy resource's lock. The database's clock as the outcome is written, never before `now`.
_ENDED_AT = func.greatest(bindparam("now"), func.clock_timestamp())
_SUCCEEDED = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("job_id"))
    .values(
        status="succeeded",
        result=bindparam("result"),
        appointment_id=bindparam("appointment_id"),
        finished_at=_ENDED_AT,
    )
    .returning(_jobs.c.finished_at)
)
_FAILED = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("job_id"))
    .values(status="failed", error=bindparam("error"), finished_at=_ENDED_AT)
    .returning(_jobs.c.finished_at)
)


_ENDED = select(_jobs.c.id).where(
    _jobs.c.id.in_(bindparam("job_ids", expanding=True)), _jobs.c.status.in_(FINISHED)
)


def ended_among(uow: UnitOfWork, job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Those of the jobs that have ended (succeeded or failed), in one statement however many they are."""
    return set(uow.session.scalars(_ENDED, {"job_ids": job_ids}))


def run(uow: UnitOfWork, job_id: uuid.UUID | str, now: datetime) -> dict[str, Any]:
    """Process one job. The booking and the job's outcome commit together; a domain error is an
    outcome (everything is rolled back and the job fails with its code), anything else propagates for
    the worker to retry."""
    # Losing this marker in a crash is harmless (the job is simply still `queued`), so it need not
    # wait for the WAL flush that the booking's own commit waits for.
    key = uuid.UUID(str(job_id))
    uow.session.execute(text("SET LOCAL synchronous_commit = off"))
    marked = uow.session.execute(_MARK_RUNNING, {"job_id": key, "now": now}).one_or_none()
    if marked is not None and marked.attempts > RUN_FAILS_AFTER_STARTS:
        log.error("job %s started %s times without finishing: failed", key, marked.attempts)
        fail_unexpectedly(uow, key, now)
        return get_job(uow, key).as_dict()
    uow.commit()  # visible as `running` to whoever polls the job
    tenant_id = marked.tenant_id if marked is not None else None
    if tenant_id is not None:
        # The rest runs as the job's tenant; the lock below makes a second delivery wait, then see the outcome.
        uow.set_tenant(tenant_id)
        app_logging.bind(tenant_id=str(tenant_id))
    job = uow.session.execute(_LOCKED, {"job_id": key}).one_or_none()
    if job is None:
        raise NotFound(f"Job {job_id} does not exist", code="job_not_found")
    if tenant_id is None or job.status in FINISHED:
        return JobView.from_row(job).as_dict()
    try:
        booked = KINDS[job.kind].handle(uow, job.payload, now, job.created_at)
    except DomainError as error:
        # Nothing of the refused request may stay: roll it all back, then record the outcome on its own.
        uow.rollback()
        job = uow.session.execute(_LOCKED, {"job_id": key}).one()
        if job.status in FINISHED:  # the lock went with the rollback: another delivery finished it
            return JobView.from_row(job).as_dict()
        # The HTTP status the same error has when the API answers it directly (used by ?wait=).
        failure = {**error.as_dict(), "http_status": error.http_status}
        ended = uow.session.scalar(_FAILED, {"job_id": key, "error": failure, "now": now})
        view = replace(JobView.from_row(job), status="failed", error=failure, finished_at=ended)
    else:
        result = booked.as_dict()
        ended = uow.session.scalar(
            _SUCCEEDED,
            {"job_id": key, "result": result, "appointment_id": booked.appointment_id, "now": now},
        )
        view = replace(JobView.from_row(job), status="succeeded", result=result, finished_at=ended)
    outcome = view.as_dict()
    uow.commit()
    return outcome


def fail_unexpectedly(uow: UnitOfWork, job_id: uuid.UUID | str, now: datetime) -> None:
    """The worker gave up on a job for a reason that is not a domain outcome (a bug, retries exhausted)."""
    uow.session.execute(
        update(IntakeJob)
        .where(IntakeJob.id == uuid.UUID(str(job_id)), IntakeJob.status.not_in(FINISHED))
        .values(status="failed", finished_at=now, error=INTERNAL_ERROR)
    )
    uow.commit()


def claim_stale(
    uow: UnitOfWork, now: datetime, queued_for: timedelta, running_for: timedelta, limit: int = 500
) -> list[tuple[uuid.UUID, str]]:
    """Jobs the queue seems to have lost, marked as re-enqueued now so that a second sweeper skips them.

    A `running` job not started again for `running_for` may only be waiting for its retry behind a
    backlog (a retry goes to the tail of its queue), so it is re-sent, never failed for that: a copy is
    harmless (a job books once), and a job that keeps dying is failed by `run` as it starts once it has
    started RUN_FAILS_AFTER_STARTS times. Only a job already past that cap, whose next start would fail it
    anyway, is failed here.
    """
    # Running since it was last started or last re-sent, whichever is later: a job that waited in a
    # backlog and has just started is not stale.
    running_since = func.greatest(IntakeJob.started_at, IntakeJob.enqueued_at)
    uow.session.execute(
        update(IntakeJob)
        .where(
            IntakeJob.status == "running",
            IntakeJob.attempts >= RUN_FAILS_AFTER_STARTS,
            running_since < now - running_for,
        )
        .values(status="failed", finished_at=now, error=INTERNAL_ERROR)
    )
    # A queued job is re-sent when it has waited since its last send at least as long as it had waited
    # before it: after waits of 1, 2, 4, 8… × queued_for (at ages 1, 3, 7, 15…), and at least every
    # MAX_RESEND_INTERVAL. A job merely waiting behind a backlog would otherwise get one more copy in the
    # queue for every sweep it waits through, and a slow queue would only grow.
    waited_before_last_send = func.least(IntakeJob.enqueued_at - IntakeJob.created_at, MAX_RESEND_INTERVAL)
    stale = (
        select(IntakeJob.id)
        .where(
            or_(
                (IntakeJob.status == "queued")
                & (IntakeJob.enqueued_at < now - queued_for)
                & (waited_before_last_send <= now - IntakeJob.enqueued_at),
                (IntakeJob.status == "running") & (running_since < now - running_for),
            )
        )
        .order_by(IntakeJob.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = uow.session.execute(
        update(IntakeJob)
        .where(IntakeJob.id.in_(stale.scalar_subquery()))
        .values(enqueued_at=now)
        .returning(IntakeJob.id, IntakeJob.queue)
    ).all()
    return [(row.id, row.queue) for row in rows]
