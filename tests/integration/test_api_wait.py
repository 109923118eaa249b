"""Requests held by `?wait=` (api/waiting.py) on the real database, with real commits: the held requests
of a process share one poll of their jobs, and a request is answered with its job's outcome as soon as
the job has ended, however many requests are held."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from api import waiting
from api.app import create_app
from api.waiting import JobWaiter
from core import intake
from core.config import Settings, get_settings
from core.db import UnitOfWork
from core.models import Appointment, IntakeJob
from tests.scenarios import committed_salon

NOW = datetime.now(UTC)
DAY = (NOW + timedelta(days=2)).date()


@pytest.fixture
def salon(committed_engine, redis_prefix):
    salon = committed_salon(committed_engine, with_api_key=True)
    yield salon
    # Jobs left queued would be re-sent by a later test's sweep (the e2e tests share this run's queues).
    with Session(committed_engine) as session:
        session.execute(
            update(IntakeJob)
            .where(IntakeJob.tenant_id == salon.tenant.id, IntakeJob.status == "queued")
            .values(status="failed", error={})
        )
        session.commit()


def booking(salon, clock: str, phone: str) -> dict:
    return {
        "service_id": str(salon.haircut.id),
        "start": salon.at(DAY, clock).isoformat(),
        "client": {"first_name": "Held", "phone": phone},
    }


def queued_jobs(salon, n: int) -> list:
    job_ids = []
    for i in range(n):
        with UnitOfWork(salon.tenant.id) as uow:
            job, _ = intake.submit(
                uow, "booking", booking(salon, "09:00", f"+3461470{i:04d}"), None, NOW, lambda *_: None
            )
        job_ids.append(job.job_id)
    return job_ids


def counted_polls(monkeypatch) -> list[list]:
    """The job ids of each poll the waiters send to the database, from now on."""
    polls: list[list] = []
    real_ended_among = intake.ended_among

    def counted(uow, ids):
        polls.append(list(ids))
        return real_ended_among(uow, ids)

    monkeypatch.setattr(waiting.intake, "ended_among", counted)
    return polls


def test_held_requests_share_one_poll_and_each_learns_when_its_job_ends(committed_engine, salon, monkeypatch):
    job_ids = queued_jobs(salon, 40)
    polls = counted_polls(monkeypatch)

    def end(ids) -> None:
        with Session(committed_engine) as session:
            session.execute(update(IntakeJob).where(IntakeJob.id.in_(ids)).values(status="failed", error={}))
            session.commit()

    async def hold_all() -> list[bool]:
        waiter = JobWaiter(interval_seconds=0.05, max_waiting=1000)
        held = [asyncio.create_task(waiter.until_ended(job_id, 1.5)) for job_id in job_ids]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(end, job_ids[:20])
        outcomes = await asyncio.gather(*held)
        assert waiter.waiting == 0
        return outcomes

    outcomes = asyncio.run(hold_all())
    assert outcomes == [True] * 20 + [False] * 20
    # One poll per tick for all 40 (1.5 s / 0.05 s), not one per request per tick.
    assert len(polls) <= 35
    assert max(len(ids) for ids in polls) == 40


def test_past_the_limit_a_request_is_not_held(salon):
    (job_id,) = queued_jobs(salon, 1)

    async def hold() -> tuple[bool, float]:
        started = time.monotonic()
        ended = await JobWaiter(interval_seconds=0.05, max_waiting=0).until_ended(job_id, 5)
        return ended, time.monotonic() - started

    ended, held_for = asyncio.run(hold())
    assert not ended
    assert held_for < 1


def run_the_next_job(salon) -> None:
    """Wait for the API to record a job, then run it as a worker would (unless a worker of the e2e tests,
    which share this run's queues, has taken it meanwhile)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with UnitOfWork(system=True) as uow:
            job_id = uow.session.scalar(
                select(IntakeJob.id).where(
                    IntakeJob.tenant_id == salon.tenant.id, IntakeJob.status == "queued"
                )
            )
        if job_id is not None:
            with UnitOfWork(system=True) as uow:
                intake.run(uow, job_id, datetime.now(UTC))
            return
        time.sleep(0.05)


def test_a_held_booking_is_answered_with_its_appointment_once_a_worker_has_booked_it(committed_engine, salon):
    worker = threading.Thread(target=run_the_next_job, args=(salon,))
    worker.start()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {salon.api_key}"}) as client:
        response = client.post("/v1/bookings?wait=10", json=booking(salon, "11:00", "+34614709999"))
        worker.join()
        assert response.status_code == 201, response.text
        job = response.json()
        result = job["result"]
        with Session(committed_engine) as session:
            appointment = session.get(Appointment, result["appointment_id"])
        assert appointment.tenant_id == salon.tenant.id
        assert appointment.scheduled_start == salon.at(DAY, "11:00")
        assert result["start"] == salon.at(DAY, "11:00").isoformat()
        # 201 names what it created; the body is the job, and both lead to the appointment.
        appointment_url = f"/v1/appointments/{appointment.id}"
        assert response.headers["Location"] == appointment_url
        assert response.headers["Content-Location"] == f"/v1/jobs/{job['job_id']}"
        assert job["links"] == {"self": f"/v1/jobs/{job['job_id']}", "appointment": appointment_url}
        assert client.get(response.headers["Content-Location"]).json()["links"] == job["links"]
        followed = client.get(response.headers["Location"])
        assert followed.status_code == 200
        assert followed.json()["booking_reference"] == result["booking_reference"]


def test_an_operators_shorter_limit_answers_202_when_it_runs_out(salon, monkeypatch):
    # Nothing runs the job (it is not even sent: the e2e tests' workers share this run's queues): the
    # request is held for the operator's limit, not the 10 s asked for.
    monkeypatch.setattr("api.routes.jobs.enqueue_intake_job", lambda job_id, queue: None)
    monkeypatch.setenv("VOICEAPPOINT_BOOKING_WAIT_MAX_SECONDS", "0.5")
    get_settings.cache_clear()
    try:
        with TestClient(create_app(), headers={"Authorization": f"Bearer {salon.api_key}"}) as client:
            started = time.monotonic()
            response = client.post("/v1/bookings?wait=10", json=booking(salon, "12:00", "+34614709998"))
            held_for = time.monotonic() - started
            too_long = client.post("/v1/bookings?wait=21", json=booking(salon, "12:15", "+34614709997"))
    finally:
        get_settings.cache_clear()
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    assert held_for < 5
    # The contract's limit stays what the OpenAPI document says, whatever the setting.
    assert too_long.status_code == 422
    assert too_long.json()["errors"][0]["field"] == "wait"


def test_a_limit_above_the_contracts_is_refused_at_start(monkeypatch):
    monkeypatch.setenv("VOICEAPPOINT_BOOKING_WAIT_MAX_SECONDS", "30")
    with pytest.raises(ValidationError, match="booking_wait_max_seconds"):
        Settings()


def test_a_held_booking_that_fails_is_answered_with_the_jobs_problem(committed_engine, salon):
    with TestClient(create_app(), headers={"Authorization": f"Bearer {salon.api_key}"}) as client:
        for phone in ("+34614709996", "+34614709995"):  # the second finds 13:00 taken by the first
            worker = threading.Thread(target=run_the_next_job, args=(salon,))
            worker.start()
            response = client.post("/v1/bookings?wait=10", json=booking(salon, "13:00", phone))
            worker.join()
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert (problem["status"], problem["code"], problem["title"]) == (409, "slot_taken", "Slot taken")
    assert problem["detail"] and problem["job_id"]
    assert response.headers["Location"] == f"/v1/jobs/{problem['job_id']}"
    assert [alternative["start"] for alternative in problem["alternatives"]] == [
        salon.at(DAY, clock).isoformat() for clock in ("12:00", "12:15", "13:45")
    ]
    assert "http_status" not in problem


def test_the_poll_stops_once_no_request_is_held(salon, monkeypatch):
    # One query per tick while requests are held, none once they have all been answered.
    (job_id,) = queued_jobs(salon, 1)
    polls = counted_polls(monkeypatch)

    async def hold_then_idle() -> tuple[bool, int, int]:
        waiter = JobWaiter(interval_seconds=0.05, max_waiting=1000)
        ended = await waiter.until_ended(job_id, 0.3)
        answered_after = len(polls)
        await asyncio.sleep(0.5)
        return ended, answered_after, len(polls)

    ended, answered_after, later = asyncio.run(hold_then_idle())
    assert not ended and answered_after >= 1
    assert later <= answered_after + 1  # at most the tick that was under way


def test_a_poll_that_fails_once_is_tried_again_and_the_held_request_still_learns_its_end(
    committed_engine, salon, monkeypatch
):
    # A database hiccup during one poll: the held request is answered as soon as its job ends, not at its
    # deadline.
    (job_id,) = queued_jobs(salon, 1)
    real_ended_among = intake.ended_among
    failures = []

    def fails_once(uow, ids):
        if not failures:
            failures.append(ids)
            raise RuntimeError("the database went away for a moment")
        return real_ended_among(uow, ids)

    monkeypatch.setattr(waiting.intake, "ended_among", fails_once)

    def end() -> None:
        with Session(committed_engine) as session:
            session.execute(update(IntakeJob).where(IntakeJob.id == job_id).values(status="failed", error={}))
            session.commit()

    async def hold() -> tuple[bool, float]:
        waiter = JobWaiter(interval_seconds=0.05, max_waiting=1000)
        started = time.monotonic()
        held = asyncio.create_task(waiter.until_ended(job_id, 5))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(end)
        return await held, time.monotonic() - started

    ended, held_for = asyncio.run(hold())
    assert failures
    assert ended and held_for < 2


def test_a_held_booking_is_answered_with_its_job_when_the_database_is_unavailable_as_the_wait_ends(
    salon, monkeypatch
):
    """The job was recorded and sent before the wait: the request was accepted. A database restarting as the
    wait ends must not turn that into 503 database_unavailable, which tells the client to send the booking
    again (without an Idempotency-Key, a second job; a helper saw it book, and the retry fail as slot_taken)."""
    monkeypatch.setattr("api.routes.jobs.enqueue_intake_job", lambda job_id, queue: None)  # nothing runs it
    monkeypatch.setenv("VOICEAPPOINT_BOOKING_WAIT_MAX_SECONDS", "0.3")
    get_settings.cache_clear()

    def database_restarting(uow, job_id):
        raise OperationalError("SELECT ...", {}, psycopg.OperationalError("server closed the connection"))

    try:
        with TestClient(create_app(), headers={"Authorization": f"Bearer {salon.api_key}"}) as client:
            monkeypatch.setattr("api.routes.jobs.intake.get_job", database_restarting)
            response = client.post("/v1/bookings?wait=10", json=booking(salon, "12:30", "+34614709996"))
    finally:
        get_settings.cache_clear()
    assert response.status_code == 202, response.text
    with UnitOfWork(salon.tenant.id, read_only=True) as uow:
        [recorded] = uow.session.scalars(
            select(IntakeJob).where(IntakeJob.tenant_id == salon.tenant.id)
        ).all()
    assert response.json()["job_id"] == str(recorded.id)
    assert response.json()["status"] == "queued"
    assert response.headers["location"] == f"/v1/jobs/{recorded.id}"
