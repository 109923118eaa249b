"""core.intake: the job life cycle on the real database (submit, run once, outcome, sweep): the cap on a
job's starts, and the sweeper leaving alone a job that has just started or waits for its retry."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from core import booking, intake
from core.db import UnitOfWork
from core.errors import Conflict
from core.models import Appointment, IntakeJob
from tasks.scheduled import RUNNING_TOO_LONG
from tests.scenarios import DAY, NOW, build_emailing_salon, build_salon, rows, submit_job
from tests.statements import statements_sent
from workers.base import JobTask, TransientError


@pytest.fixture
def salon(db):
    return build_salon(db)


@pytest.fixture
def emailing_salon(db):
    return build_emailing_salon(db)


def payload(salon, clock="10:00", phone="+34612345678"):
    return {
        "service_id": str(salon.haircut.id),
        "start": salon.at(DAY, clock).isoformat(),
        "client": {"first_name": "Lucía", "phone": phone},
    }


def submit(salon, body, key=None, sent=None):
    with UnitOfWork(salon.tenant.id) as uow:
        job, created = intake.submit(
            uow,
            "booking",
            body,
            key,
            NOW,
            lambda job_id, queue: (sent if sent is not None else []).append((job_id, queue)),
        )
    return job, created


def run(job_id):
    with UnitOfWork(system=True) as uow:  # as the worker runs it
        return intake.run(uow, job_id, NOW)


def claim(now):
    with UnitOfWork(system=True) as uow:  # as the sweeper runs it
        claimed = intake.claim_stale(uow, now, queued_for=timedelta(minutes=1), running_for=RUNNING_TOO_LONG)
        uow.commit()
    return {job_id for job_id, _ in claimed}


def test_a_job_is_enqueued_only_after_it_is_committed(db, salon):
    sent = []
    job, created = submit(salon, payload(salon), sent=sent)
    assert created and job.status == "queued"
    assert sent == [(job.job_id, "bookings")]
    stored = db.get(IntakeJob, job.job_id)
    assert stored.request_hash == intake.request_hash("booking", stored.payload)
    assert stored.payload == intake.canonical_payload(payload(salon))


def test_a_job_is_shown_as_it_is_now_even_to_a_unit_of_work_that_read_it_before(db, salon):
    job, _ = submit(salon, payload(salon))
    with UnitOfWork(salon.tenant.id) as uow:
        held = uow.get(IntakeJob, job.job_id, code="job_not_found", what="Job")  # the session keeps it
        assert held.status == "queued"
        # Meanwhile a worker ends it (here on the same connection; a commit elsewhere reads the same).
        db.execute(update(IntakeJob).where(IntakeJob.id == job.job_id).values(status="failed", error={}))
        assert intake.get_job(uow, job.job_id).status == "failed"


def test_a_job_is_read_in_one_statement(db, salon):
    """The status poll is the API's most frequent request."""
    job, _ = submit(salon, payload(salon))
    with statements_sent(db.get_bind().engine) as sent, UnitOfWork(salon.tenant.id) as uow:
        assert intake.get_job(uow, job.job_id).job_id == job.job_id
    assert len([statement for statement in sent if "intake_jobs" in statement]) == 1, sent


def test_a_repeated_key_returns_the_first_job_and_another_body_is_a_conflict(db, salon):
    sent = []
    first, _ = submit(salon, payload(salon), "order-1", sent)
    again, created = submit(salon, payload(salon), "order-1", sent)
    assert again.job_id == first.job_id and not created
    assert len(sent) == 1
    with pytest.raises(Conflict) as reused:
        submit(salon, payload(salon, "11:00"), "order-1")
    assert reused.value.code == "idempotency_key_reused"
    # The same key is another tenant's own business.
    other = build_salon(db)
    theirs, created = submit(other, payload(other), "order-1")
    assert created and theirs.job_id != first.job_id


def test_running_a_job_twice_books_once(db, salon):
    job, _ = submit(salon, payload(salon))
    first = run(job.job_id)
    second = run(job.job_id)
    assert first["status"] == second["status"] == "succeeded"
    assert first["result"] == second["result"]
    stored = db.get(IntakeJob, job.job_id)
    db.refresh(stored)
    assert stored.appointment_id == uuid.UUID(first["result"]["appointment_id"])
    assert stored.attempts == 1
    count = db.scalar(
        select(func.count()).select_from(Appointment).where(Appointment.tenant_id == salon.tenant.id)
    )
    assert count == 1


def test_a_delivery_that_marked_the_job_while_another_ran_it_does_not_book_again(db, monkeypatch):
    """Two deliveries of one job (a redelivery while the first still runs) both mark it running; the one
    that gets the job's lock second finds it finished and answers its outcome: it must not book again."""
    salon = build_salon(db, chairs=0)  # two interchangeable stylists: a second booking would find one free
    job, _ = submit(salon, payload(salon))
    bind, other = intake.app_logging.bind, []

    def the_other_delivery_runs_meanwhile(**fields):
        # Called by `run` right after its `running` mark commits, before it locks the job.
        bind(**fields)
        if not other:
            other.append(None)
            other[0] = run(job.job_id)

    monkeypatch.setattr(intake.app_logging, "bind", the_other_delivery_runs_meanwhile)
    second = run(job.job_id)
    first = other[0]
    assert first["status"] == second["status"] == "succeeded"
    assert second["result"] == first["result"]
    assert rows(db, Appointment, salon) == 1


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_a_job_ends_when_its_outcome_is_written_not_when_its_run_began(db, salon, monkeypatch, outcome):
    # A run may wait seconds for a busy resource's lock after `now` was read: finished_at was `now`, the
    # same instant as started_at, whatever the wait (found in review).
    began = datetime.now(UTC)  # the database's clock is the real one: so is this run's
    soon = {**payload(salon), "start": salon.at((began + timedelta(days=2)).date(), "10:00").isoformat()}
    with UnitOfWork(salon.tenant.id) as uow:
        job, _ = intake.submit(uow, "booking", soon, None, began, lambda job_id, queue: None)
    booking_kind = intake.KINDS["booking"]

    def slow_handle(uow, body, now, requested_at):
        time.sleep(0.3)  # as a wait for a lock would
        if outcome == "failed":
            raise Conflict("Taken meanwhile.", code="slot_taken")
        return booking_kind.handle(uow, body, now, requested_at)

    monkeypatch.setitem(intake.KINDS, "booking", intake.JobKind(booking_kind.validate, slow_handle))
    with UnitOfWork(system=True) as uow:
        answered = intake.run(uow, job.job_id, began)
    stored = db.get(IntakeJob, job.job_id)
    db.refresh(stored)
    assert stored.status == outcome
    assert stored.finished_at >= began + timedelta(seconds=0.3)
    assert answered["finished_at"] == stored.finished_at.isoformat()


def test_a_domain_error_is_the_jobs_outcome_and_books_nothing(db, salon):
    winner, _ = submit(salon, payload(salon))
    loser, _ = submit(salon, payload(salon, phone="+34612345679"))
    run(winner.job_id)
    outcome = run(loser.job_id)
    assert outcome["status"] == "failed"
    assert outcome["error"]["code"] == "slot_taken"
    assert len(outcome["error"]["alternatives"]) == 3
    stored = db.get(IntakeJob, loser.job_id)
    db.refresh(stored)
    # When its outcome was written: the database's clock, never before the run's `now`.
    assert stored.finished_at >= NOW and stored.appointment_id is None
    # The HTTP status is kept for ?wait= answers, and is not part of the job as shown.
    with UnitOfWork(salon.tenant.id) as uow:
        shown = intake.get_job(uow, loser.job_id)
    assert shown.http_status == 409
    assert set(shown.as_dict()["error"]) == {"code", "message", "alternatives"}
    assert "http_status" not in outcome["error"]


def test_the_sweeper_claims_jobs_the_queue_lost_once(db, salon):
    lost, _ = submit(salon, payload(salon))
    fresh, _ = submit(salon, payload(salon, "11:00"))
    db.get(IntakeJob, lost.job_id).enqueued_at = NOW - timedelta(minutes=5)
    db.flush()
    with UnitOfWork(system=True) as uow:  # as the sweeper runs it
        claimed = intake.claim_stale(
            uow, NOW, queued_for=timedelta(minutes=1), running_for=timedelta(minutes=5)
        )
        uow.commit()
    assert (lost.job_id, "bookings") in claimed
    assert fresh.job_id not in {job_id for job_id, _ in claimed}
    with UnitOfWork(system=True) as uow:
        again = intake.claim_stale(
            uow, NOW, queued_for=timedelta(minutes=1), running_for=timedelta(minutes=5)
        )
    assert lost.job_id not in {job_id for job_id, _ in again}


def test_a_queued_job_written_without_enqueued_at_is_claimed_by_the_sweeper(db, salon):
    # By an import or a script, not by submit: it was never sent. With a NULL enqueued_at the sweeper never
    # claimed it (revision 026 makes the column default to the time the row is written).
    job_id = db.scalar(
        text(
            "INSERT INTO intake_jobs (tenant_id, kind, request_hash, payload)"
            " VALUES (:tenant_id, 'booking', 'imported', '{}'::jsonb) RETURNING id"
        ),
        {"tenant_id": salon.tenant.id},
    )
    assert job_id in claim(datetime.now(UTC) + timedelta(minutes=2))


def test_a_replay_returns_the_first_job_even_when_the_request_would_now_be_refused(db, salon):
    first, _ = submit(salon, payload(salon), "order-9")
    run(first.job_id)
    # The slot is now taken and, a day later, in the past: the replay is still the same booking.
    with UnitOfWork(salon.tenant.id) as uow:
        again, created = intake.submit(
            uow, "booking", payload(salon), "order-9", NOW + timedelta(days=5), lambda *_: None
        )
    assert again.job_id == first.job_id and not created
    assert again.status == "succeeded"


def test_a_job_waiting_behind_a_backlog_is_re_sent_ever_more_rarely(db, salon):
    job, _ = submit(salon, payload(salon))

    def sweep(at: datetime) -> bool:
        with UnitOfWork(system=True) as uow:
            claimed = intake.claim_stale(
                uow, at, queued_for=timedelta(minutes=1), running_for=timedelta(minutes=5)
            )
            uow.commit()
        return job.job_id in {job_id for job_id, _ in claimed}

    minute = timedelta(minutes=1)
    # Sent at 0; re-sent after waiting 1 minute, then 2 more, then 4 more: not at every sweep; and from
    # then on every 15 minutes, so a copy lost in an outage is not followed by as long a wait again.
    sent_at = [m for m in range(0, 61) if m and sweep(NOW + m * minute + timedelta(seconds=1))]
    assert sent_at == [1, 3, 7, 15, 30, 45, 60]


def test_a_job_is_sent_only_once_another_connection_can_read_it(committed_engine):
    """A worker that takes the message at once must find the row: the send waits for the commit."""
    with Session(committed_engine, expire_on_commit=False) as session:
        salon = build_salon(session)
        session.commit()
    readable_when_sent = []

    def enqueue(job_id, queue):
        with Session(committed_engine) as worker_side:  # another connection, as a worker's
            readable_when_sent.append(worker_side.get(IntakeJob, job_id) is not None)

    with UnitOfWork(salon.tenant.id) as uow:
        job, created = intake.submit(uow, "booking", payload(salon), None, NOW, enqueue)
    assert created and readable_when_sent == [True]
    with Session(committed_engine) as session:  # nobody runs it: keep later sweeps off it
        session.execute(update(IntakeJob).where(IntakeJob.id == job.job_id).values(status="failed", error={}))
        session.commit()


def test_a_job_that_fails_before_its_outcome_is_written_leaves_no_booking(committed_engine, monkeypatch):
    """The booking and the job's outcome commit together: a crash between them (here, writing the result)
    leaves neither, and the job is `running` for the worker's retry or the sweeper."""
    with Session(committed_engine, expire_on_commit=False) as session:
        salon = build_salon(session)
        session.commit()
    with UnitOfWork(salon.tenant.id) as uow:
        job, _ = intake.submit(uow, "booking", payload(salon), None, NOW, lambda *_: None)

    def crash(self):
        raise RuntimeError("the worker died while writing the outcome")

    monkeypatch.setattr(booking.BookedAppointment, "as_dict", crash)
    with pytest.raises(RuntimeError):
        run(job.job_id)

    with Session(committed_engine) as session:
        stored = session.get(IntakeJob, job.job_id)
        booked = session.scalar(
            select(func.count()).select_from(Appointment).where(Appointment.tenant_id == salon.tenant.id)
        )
        assert (stored.status, stored.appointment_id, booked) == ("running", None, 0)
        stored.status, stored.error = "failed", {}  # nobody retries it here: keep later sweeps off it
        session.commit()


def test_a_job_recorded_before_starts_were_stored_in_utc_is_replayed_by_the_same_body(db, salon):
    """Its hash is of the body as it was sent (the start with its offset): a retry across the upgrade
    must get the job, not 409 idempotency_key_reused."""
    sent = payload(salon)
    recorded, _ = submit(salon, payload(salon, clock="11:00"), key="order-before-upgrade")
    db.execute(
        update(IntakeJob)
        .where(IntakeJob.id == recorded.job_id)
        .values(
            payload=sent, request_hash=intake.request_hash("booking", sent)
        )  # as the old release stored it
    )
    again, created = submit(salon, payload(salon), key="order-before-upgrade")
    assert (again.job_id, created) == (recorded.job_id, False)
    with pytest.raises(Conflict):
        submit(salon, payload(salon, clock="12:00"), key="order-before-upgrade")


@pytest.mark.parametrize("resource_ids_as_sent", ["empty", "unsorted"])
def test_a_job_recorded_with_resource_ids_as_sent_is_replayed_by_the_same_body(
    db, salon, resource_ids_as_sent
):
    """Recorded before an empty resource_ids was dropped (found in review), or before resource_ids were sorted:
    its hash has the start in UTC and the list as it was sent. The same body again (its start with an offset)
    must get the job."""
    resource_ids = (
        [] if resource_ids_as_sent == "empty" else [str(salon.stylists[0].id), str(salon.chairs[0].id)]
    )
    if resource_ids_as_sent == "unsorted":
        resource_ids.sort(reverse=True)
    sent = {**payload(salon), "resource_ids": resource_ids}
    recorded, _ = submit(salon, payload(salon, clock="11:00"), key=f"order-{resource_ids_as_sent}")
    as_stored = {**sent, "start": salon.at(DAY, "10:00").astimezone(UTC).isoformat()}
    db.execute(
        update(IntakeJob)
        .where(IntakeJob.id == recorded.job_id)
        .values(payload=as_stored, request_hash=intake.request_hash("booking", as_stored))
    )
    again, created = submit(salon, sent, key=f"order-{resource_ids_as_sent}")
    assert (again.job_id, created) == (recorded.job_id, False)


@pytest.mark.parametrize(
    ("start", "stored"),
    [
        ("2027-03-30T10:00:00+02:00", "2027-03-30T08:00:00+00:00"),
        ("2027-03-30T08:00:00Z", "2027-03-30T08:00:00+00:00"),
        # Left as they came, for the validation to refuse with its own code.
        ("2027-03-30T10:00:00", "2027-03-30T10:00:00"),
        ("tomorrow", "tomorrow"),
        ("0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00+01:00"),
        (None, None),
    ],
)
def test_a_start_is_stored_in_utc_when_it_can_be_read(start, stored):
    assert intake.canonical_payload({"start": start, "notes": "x"}) == {"start": stored, "notes": "x"}


def test_a_job_that_keeps_dying_is_failed_not_requeued_forever(db, emailing_salon):
    job = submit_job(emailing_salon)
    stored = db.get(IntakeJob, job.job_id)
    stored.status, stored.attempts = "running", 50
    stored.started_at = stored.enqueued_at = NOW - timedelta(hours=1)
    db.flush()
    claimed = claim(NOW)
    db.refresh(stored)
    assert job.job_id not in claimed
    assert stored.status == "failed"


def test_a_job_waiting_for_its_longest_retry_is_left_to_it_by_the_sweeper(db, emailing_salon):
    # The provider asked for a long pause; the job stays `running` while its retry waits.
    longest_wait = JobTask().retry_countdown(TransientError("429", retry_after=10**6))
    job = submit_job(emailing_salon)
    stored = db.get(IntakeJob, job.job_id)
    stored.status, stored.attempts, stored.started_at = "running", 5, NOW
    db.flush()
    retry_starts = NOW + timedelta(seconds=longest_wait + JobTask.time_limit)
    assert job.job_id not in claim(retry_starts)
    db.refresh(stored)
    assert stored.status == "running", stored.error
    # Not started again for longer: its message may be lost, or its retry may still wait behind a backlog
    # (a retry is queued at the tail). It is sent again (a copy books nothing twice), not failed while a
    # retry that would book it may be on its way.
    assert job.job_id in claim(NOW + RUNNING_TOO_LONG + timedelta(seconds=1))
    db.refresh(stored)
    assert stored.status == "running"


@pytest.mark.parametrize(
    ("starts", "outcome"),
    [(intake.RUN_FAILS_AFTER_STARTS - 1, "running"), (intake.RUN_FAILS_AFTER_STARTS, "failed")],
)
def test_the_sweeper_fails_a_stale_running_job_only_once_its_next_start_would(
    db, emailing_salon, starts, outcome
):
    job = submit_job(emailing_salon)
    stored = db.get(IntakeJob, job.job_id)
    stored.status, stored.attempts = "running", starts
    stored.started_at = stored.enqueued_at = NOW - RUNNING_TOO_LONG - timedelta(seconds=1)
    db.flush()
    claimed = claim(NOW)
    db.refresh(stored)
    assert stored.status == outcome
    assert (job.job_id in claimed) == (outcome == "running")


def test_a_stale_running_job_is_sent_again_once_per_period_not_on_every_sweep(db, emailing_salon):
    # Running since it was last started or last re-sent: the copy the sweeper sent is given as long as a
    # start is, or every sweep (each minute) would add one more copy to the queue.
    job = submit_job(emailing_salon)
    stored = db.get(IntakeJob, job.job_id)
    stored.status, stored.attempts = "running", 1
    stored.started_at = stored.enqueued_at = NOW - RUNNING_TOO_LONG - timedelta(seconds=1)
    db.flush()
    assert job.job_id in claim(NOW)
    assert job.job_id not in claim(NOW + timedelta(minutes=1))
    assert job.job_id not in claim(NOW + RUNNING_TOO_LONG)
    assert job.job_id in claim(NOW + RUNNING_TOO_LONG + timedelta(seconds=1))


def test_a_job_re_run_as_the_runbook_says_is_sent_by_the_next_sweep_and_runs(db, emailing_salon):
    runbook = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    (requeue,) = re.findall(r"UPDATE intake_jobs SET status = 'queued'.*?;", runbook, flags=re.S)
    # The runbook's SQL reads no clock (enqueued_at = created_at): a job failed two days before NOW.
    now = NOW
    job = submit_job(emailing_salon, at=now - timedelta(days=2))
    stored = db.get(IntakeJob, job.job_id)
    stored.status, stored.attempts = "running", intake.RUN_FAILS_AFTER_STARTS
    db.flush()
    with UnitOfWork(system=True) as uow:  # its next start fails it: a poison job, which the runbook re-runs
        assert intake.run(uow, job.job_id, now=now)["error"]["code"] == "internal_error"
    db.execute(text(requeue.replace("<job_id>", str(job.job_id))))
    assert job.job_id in claim(now)
    # Its starts counted afresh: with its old count it failed again at once (found in review).
    with UnitOfWork(system=True) as uow:
        assert intake.run(uow, job.job_id, now=now)["status"] == "succeeded"
    assert rows(db, Appointment, emailing_salon) == 1


def test_a_job_that_just_started_after_a_backlog_is_not_requeued(db, emailing_salon):
    job = submit_job(emailing_salon)
    stored = db.get(IntakeJob, job.job_id)
    # Waited ten minutes in a busy queue, picked up ten seconds ago, still booking.
    stored.status, stored.attempts = "running", 1
    stored.enqueued_at = NOW - timedelta(minutes=10)
    stored.started_at = NOW - timedelta(seconds=10)
    db.flush()
    assert job.job_id not in claim(NOW)


def test_a_job_started_too_often_is_failed_as_it_starts_and_books_nothing(db, emailing_salon):
    # A job that kills its worker process comes straight back (reject_on_worker_lost), again and again.
    job = submit_job(emailing_salon)
    stored = db.get(IntakeJob, job.job_id)
    stored.status, stored.attempts = "running", intake.RUN_FAILS_AFTER_STARTS
    db.flush()
    with UnitOfWork(system=True) as uow:
        outcome = intake.run(uow, job.job_id, now=NOW)
    db.refresh(stored)
    assert outcome["status"] == "failed" and outcome["error"]["code"] == "internal_error"
    assert (stored.status, stored.attempts, stored.finished_at) == (
        "failed",
        intake.RUN_FAILS_AFTER_STARTS + 1,
        NOW,
    )
    assert rows(db, Appointment, emailing_salon) == 0


def test_a_job_one_start_below_the_cap_still_books(db, emailing_salon):
    job = submit_job(emailing_salon)
    stored = db.get(IntakeJob, job.job_id)
    stored.status, stored.attempts = "running", intake.RUN_FAILS_AFTER_STARTS - 1
    db.flush()
    with UnitOfWork(system=True) as uow:
        assert intake.run(uow, job.job_id, now=NOW)["status"] == "succeeded"


@pytest.mark.parametrize(
    ("failure", "level", "traceback"),
    [
        (
            intake.EnqueueFailed("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
            "WARNING",
            False,
        ),
        (TypeError("send_task() got an unexpected keyword argument"), "ERROR", True),
    ],
)
def test_a_job_the_broker_cannot_take_is_kept_and_logged_by_its_cause(
    salon, caplog, failure, level, traceback
):
    def enqueue(job_id, queue):
        raise failure

    with UnitOfWork(salon.tenant.id) as uow:
        job, _ = intake.submit(uow, "booking", payload(salon), None, NOW, enqueue)
    assert job.status == "queued"  # recorded for the sweeper either way
    [record] = [r for r in caplog.records if f"could not enqueue job {job.job_id}" in r.getMessage()]
    # The broker down: one line with its cause. Anything else is a defect, and keeps its traceback.
    assert (record.levelname, record.exc_info is not None) == (level, traceback)
    assert str(failure) in record.getMessage() or traceback
