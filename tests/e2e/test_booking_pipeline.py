"""The whole pipeline under real concurrency: uvicorn, two real worker processes, PostgreSQL, Redis."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import socket
import subprocess
import time as clock
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from core import intake
from core.db import UnitOfWork
from core.models import Appointment, AppointmentResource, IntakeJob
from tests.e2e.processes import ProcessHarness, free_port
from tests.scenarios import build_salon

JOB_TIMEOUT = 120


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def salon(committed_engine):
    with Session(committed_engine, expire_on_commit=False) as session:
        salon = build_salon(session, stylists=3, chairs=1, with_api_key=True)
        session.commit()
        return salon


def booking_day(salon) -> datetime:
    return (datetime.now(salon.zone) + timedelta(days=3)).date()


def body(salon, start: datetime, phone: str, resource_ids=()) -> dict:
    payload = {
        "service_id": str(salon.haircut.id),
        "start": start.isoformat(),
        "client": {"first_name": "Caller", "phone": phone},
    }
    if resource_ids:
        payload["resource_ids"] = [str(r) for r in resource_ids]
    return payload


def post_all(api_server, salon, bodies: list[dict]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        headers = {"Authorization": f"Bearer {salon.api_key}"}
        async with httpx.AsyncClient(
            base_url=api_server.base_url, headers=headers, limits=limits, timeout=60
        ) as client:
            return await asyncio.gather(*(client.post("/v1/bookings", json=b) for b in bodies))

    return asyncio.run(run())


def wait_for_jobs(engine, job_ids: list[str]) -> list[IntakeJob]:
    deadline = clock.monotonic() + JOB_TIMEOUT
    with Session(engine) as session:
        while True:
            jobs = session.scalars(select(IntakeJob).where(IntakeJob.id.in_(job_ids))).all()
            if all(job.status in ("succeeded", "failed") for job in jobs) or clock.monotonic() > deadline:
                return jobs
            session.expire_all()
            clock.sleep(0.2)


def overlapping_allocations(engine, tenant_id) -> int:
    with engine.connect() as connection:
        return connection.execute(
            text(
                """
                SELECT count(*) FROM appointment_resources a
                JOIN appointment_resources b
                  ON a.resource_id = b.resource_id AND a.id < b.id AND a.allocated_during && b.allocated_during
                JOIN resources r ON r.id = a.resource_id
                WHERE a.active AND b.active AND r.tenant_id = :tenant
                """
            ),
            {"tenant": tenant_id},
        ).scalar_one()


def test_two_hundred_requests_for_one_slot_give_one_appointment(committed_engine, worker, api_server, salon):
    start = salon.at(booking_day(salon), "10:00")
    bodies = [body(salon, start, f"+3461200{i:04d}") for i in range(200)]

    responses = post_all(api_server, salon, bodies)

    assert [r.status_code for r in responses] == [202] * 200
    job_ids = [r.json()["job_id"] for r in responses]
    assert len(set(job_ids)) == 200
    jobs = wait_for_jobs(committed_engine, job_ids)
    succeeded = [job for job in jobs if job.status == "succeeded"]
    failed = [job for job in jobs if job.status == "failed"]
    assert len(succeeded) == 1, [job.status for job in jobs if job.status not in ("succeeded", "failed")]
    assert len(failed) == 199
    assert {job.error["code"] for job in failed} == {"slot_taken"}
    assert all(len(job.error["alternatives"]) == 3 for job in failed)
    assert all(alt["start"] != start.isoformat() for job in failed for alt in job.error["alternatives"])

    with Session(committed_engine) as session:
        appointments = session.scalars(
            select(Appointment).where(Appointment.tenant_id == salon.tenant.id)
        ).all()
        assert [a.id for a in appointments] == [succeeded[0].appointment_id]
        assert appointments[0].scheduled_start == start
    assert overlapping_allocations(committed_engine, salon.tenant.id) == 0

    # The job API tells the same story.
    with api_server.client(headers={"Authorization": f"Bearer {salon.api_key}"}) as client:
        won = client.get(f"/v1/jobs/{succeeded[0].id}").json()
        assert won["status"] == "succeeded"
        assert won["result"]["appointment_id"] == str(succeeded[0].appointment_id)
        lost = client.get(f"/v1/jobs/{failed[0].id}").json()
        assert lost["error"]["code"] == "slot_taken"
        appointment = client.get(f"/v1/appointments/{succeeded[0].appointment_id}").json()
        assert appointment["start"] == start.isoformat()
        assert {r["resource_id"] for r in appointment["resources"]} >= {str(salon.chairs[0].id)}


def overlapping_haircuts(salon, phone_prefix: str) -> list[dict]:
    """90 requests for 45-minute haircuts starting every 15 minutes from 10:00 to 12:45, every other one for
    a stylist of the client's choice."""
    day = booking_day(salon)
    bodies = []
    for i in range(90):
        start = salon.at(day, f"{10 + (i % 12) // 4:02d}:{(i % 4) * 15:02d}")
        stylist = salon.stylists[i % 3].id if i % 2 else None
        bodies.append(body(salon, start, f"{phone_prefix}{i:04d}", [stylist] if stylist else ()))
    return bodies


def test_overlapping_requests_for_stylists_sharing_a_chair_never_double_book(
    committed_engine, worker, api_server, salon
):
    # Most of them overlap on the one chair.
    responses = post_all(api_server, salon, overlapping_haircuts(salon, "+3461300"))

    assert {r.status_code for r in responses} == {202}
    jobs = wait_for_jobs(committed_engine, [r.json()["job_id"] for r in responses])
    assert {job.status for job in jobs} <= {"succeeded", "failed"}
    assert {job.error["code"] for job in jobs if job.status == "failed"} == {"slot_taken"}
    succeeded = [job for job in jobs if job.status == "succeeded"]
    # 10:00-13:00 on one chair holds at most four 45-minute haircuts; it must hold at least one.
    assert 1 <= len(succeeded) <= 4
    assert overlapping_allocations(committed_engine, salon.tenant.id) == 0
    with Session(committed_engine) as session:
        chair_allocations = session.scalar(
            select(func.count())
            .select_from(AppointmentResource)
            .where(
                AppointmentResource.resource_id == salon.chairs[0].id, AppointmentResource.active.is_(True)
            )
        )
        assert chair_allocations == len(succeeded)


def test_overlapping_requests_for_three_stylists_never_double_book_one(committed_engine, worker, api_server):
    """No chair this time: each stylist is the bottleneck, chosen by the client or picked by the worker."""
    with Session(committed_engine, expire_on_commit=False) as session:
        salon = build_salon(session, stylists=3, chairs=0, with_api_key=True)
        session.commit()
    responses = post_all(api_server, salon, overlapping_haircuts(salon, "+3461310"))

    assert {r.status_code for r in responses} == {202}
    jobs = wait_for_jobs(committed_engine, [r.json()["job_id"] for r in responses])
    assert {job.error["code"] for job in jobs if job.status == "failed"} <= {"slot_taken"}
    succeeded = [job for job in jobs if job.status == "succeeded"]
    # Three stylists, 45-minute haircuts from 10:00 to 12:45: at most four each.
    assert 3 <= len(succeeded) <= 12
    assert overlapping_allocations(committed_engine, salon.tenant.id) == 0


def test_an_appointment_is_booked_moved_and_cancelled_over_http(committed_engine, worker, api_server, salon):
    day = booking_day(salon)
    start, later = salon.at(day, "13:00"), salon.at(day, "14:00")
    with api_server.client(headers={"Authorization": f"Bearer {salon.api_key}"}, timeout=30) as client:
        booked = client.post("/v1/bookings?wait=15", json=body(salon, start, "+34612999060"))
        appointment_id = booked.json()["result"]["appointment_id"]
        moved = client.post(
            f"/v1/appointments/{appointment_id}/reschedule?wait=15", json={"start": later.isoformat()}
        )
        after_the_move = client.get(f"/v1/appointments/{appointment_id}")
        cancelled = client.post(
            f"/v1/appointments/{appointment_id}/cancel?wait=15", json={"reason": "Client is ill"}
        )
        after_the_cancel = client.get(f"/v1/appointments/{appointment_id}")

    assert booked.status_code == 201, booked.text
    assert moved.status_code == 200, moved.text
    assert moved.json()["kind"] == "reschedule" and moved.json()["result"]["start"] == later.isoformat()
    assert after_the_move.json()["start"] == later.isoformat()
    assert after_the_move.json()["booking_reference"] == booked.json()["result"]["booking_reference"]
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["result"]["status"] == "cancelled"
    assert (after_the_cancel.json()["status"], after_the_cancel.json()["cancellation_reason"]) == (
        "cancelled",
        "Client is ill",
    )
    with Session(committed_engine) as session:
        stored = session.get(Appointment, appointment_id)
        held = session.scalar(
            select(func.count())
            .select_from(AppointmentResource)
            .where(AppointmentResource.appointment_id == stored.id, AppointmentResource.active)
        )
    assert (stored.status, stored.scheduled_start, held) == ("cancelled", later, 0)


def test_the_curl_walk_through_of_docs_api_md_runs_as_written(committed_engine, worker, api_server, salon):
    """docs/api.md's "A whole booking with curl", run by bash against a real API and worker, with only the
    address and the key filled in."""
    text = (REPO / "docs" / "api.md").read_text()
    script = text.split("## A whole booking with curl", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    script = re.sub(r"^API=.*$", f"API={api_server.base_url}", script, count=1, flags=re.MULTILINE)
    script = re.sub(r"^KEY=.*$", f"KEY={salon.api_key}", script, count=1, flags=re.MULTILINE)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0 and not done.stderr, done.stderr
    assert '"code":"slot_taken"' in done.stdout  # the second booking of the same slot, with ?wait=10
    assert done.stdout.rstrip().endswith("}") and '"kind":"cancel","status":"succeeded"' in done.stdout
    with Session(committed_engine) as session:
        [appointment] = session.scalars(select(Appointment).where(Appointment.tenant_id == salon.tenant.id))
        first_slot = min(
            session.scalars(
                select(IntakeJob.payload["start"].astext).where(
                    IntakeJob.tenant_id == salon.tenant.id, IntakeJob.kind == "booking"
                )
            )
        )
    assert appointment.status == "cancelled" and appointment.cancellation_reason == "Client is ill"
    # Moved an hour later, as step 6 says.
    assert appointment.scheduled_start == datetime.fromisoformat(first_slot) + timedelta(hours=1)


def test_a_replayed_idempotency_key_returns_the_first_job(committed_engine, worker, api_server, salon):
    start = salon.at(booking_day(salon), "15:00")
    headers = {"Authorization": f"Bearer {salon.api_key}", "Idempotency-Key": f"order-{uuid.uuid4()}"}
    with api_server.client(headers=headers, timeout=30) as client:
        first = client.post("/v1/bookings?wait=15", json=body(salon, start, "+34612999001"))
        replay = client.post("/v1/bookings", json=body(salon, start, "+34612999001"))
        other = client.post("/v1/bookings", json=body(salon, start, "+34612999002"))

    assert first.status_code == 201, first.text
    assert first.json()["result"]["start"] == start.isoformat()
    assert replay.status_code == 202
    assert replay.json()["job_id"] == first.json()["job_id"]
    assert replay.json()["status"] == "succeeded"
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["code"] == "idempotency_key_reused"
    with Session(committed_engine) as session:
        assert (
            session.scalar(
                select(func.count()).select_from(IntakeJob).where(IntakeJob.tenant_id == salon.tenant.id)
            )
            == 1
        )
        assert (
            session.scalar(
                select(func.count()).select_from(Appointment).where(Appointment.tenant_id == salon.tenant.id)
            )
            == 1
        )


def test_wait_answers_a_taken_slot_with_a_problem_and_alternatives(
    committed_engine, worker, api_server, salon
):
    start = salon.at(booking_day(salon), "16:00")
    with api_server.client(headers={"Authorization": f"Bearer {salon.api_key}"}, timeout=30) as client:
        assert client.post("/v1/bookings?wait=15", json=body(salon, start, "+34612999003")).status_code == 201
        taken = client.post("/v1/bookings?wait=15", json=body(salon, start, "+34612999004"))
    assert taken.status_code == 409
    assert taken.json()["code"] == "slot_taken"
    assert len(taken.json()["alternatives"]) == 3
    assert taken.json()["job_id"]


def test_a_job_accepted_while_the_broker_was_down_is_booked_by_the_sweeper(
    committed_engine, worker, celery_client, salon
):
    def broker_down(job_id, queue):
        raise ConnectionError("redis is down")

    start = salon.at(booking_day(salon), "17:00")
    with UnitOfWork(salon.tenant.id) as uow:
        job, _ = intake.submit(
            uow, "booking", body(salon, start, "+34612999005"), None, datetime.now(UTC), broker_down
        )
    with Session(committed_engine) as session:
        stored = session.get(IntakeJob, job.job_id)
        assert stored.status == "queued"
        # As if a minute had passed without any worker hearing of it.
        stored.enqueued_at = datetime.now(UTC) - timedelta(minutes=2)
        session.commit()

    assert celery_client.send_task("scheduled.sweep_intake").get(timeout=30)["requeued"] >= 1

    (finished,) = wait_for_jobs(committed_engine, [str(job.job_id)])
    assert finished.status == "succeeded", finished.error
    assert finished.result["start"] == start.isoformat()


def test_killing_worker_processes_mid_stream_loses_no_booking(committed_engine, worker, api_server):
    with Session(committed_engine, expire_on_commit=False) as session:
        salon = build_salon(session, stylists=1, chairs=1, duration_minutes=15, with_api_key=True)
        session.commit()
    day = booking_day(salon)
    # Sixty haircuts at distinct times over two days: every one of them must end up booked.
    starts = [
        salon.at(day, "09:00") + timedelta(minutes=15 * (n % 30)) + timedelta(days=n // 30) for n in range(60)
    ]
    bodies = [body(salon, start, f"+3461500{n:04d}") for n, start in enumerate(starts)]

    responses = post_all(api_server, salon, bodies[:30])
    for victim in worker:
        victim.kill_hard()
    responses += post_all(api_server, salon, bodies[30:])
    worker[0].kill_hard()

    jobs = wait_for_jobs(committed_engine, [r.json()["job_id"] for r in responses])
    assert [job.status for job in jobs] == ["succeeded"] * 60, {
        job.error["code"] for job in jobs if job.error
    }
    with Session(committed_engine) as session:
        booked = session.scalar(
            select(func.count()).select_from(Appointment).where(Appointment.tenant_id == salon.tenant.id)
        )
    assert booked == 60
    assert overlapping_allocations(committed_engine, salon.tenant.id) == 0


@contextlib.contextmanager
def a_broker_that_never_answers() -> Iterator[str]:
    """A port whose connections the kernel accepts and nobody ever reads: a Redis that hangs (stopped,
    swapping), not one that is down."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(100)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


@pytest.mark.parametrize(("broker", "clock_time"), [("down", "11:00"), ("hanging", "12:00")])
def test_a_booking_accepted_while_redis_is_down_is_not_lost(
    committed_engine, worker, celery_client, process_environment, salon, broker, clock_time
):
    # A second API whose broker does not answer: a closed port (Redis down), or one that never replies.
    with contextlib.ExitStack() as stack:
        redis_url = (
            f"redis://127.0.0.1:{free_port()}/0"
            if broker == "down"
            else stack.enter_context(a_broker_that_never_answers())
        )
        accepted, ready, api_log = _book_with_the_broker_at(
            process_environment, celery_client, salon, redis_url, clock_time
        )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "queued"
    assert ready.status_code == 503 and ready.json()["checks"]["broker"] == "unavailable"

    job_id = accepted.json()["job_id"]
    # One line per request that could not be queued, saying why: an outage is not a hundred lines a request.
    [warning] = [line for line in api_log.splitlines() if f"could not enqueue job {job_id}" in line]
    assert "the sweeper will retry" in warning
    assert "Traceback" not in api_log
    with Session(committed_engine) as session:
        stored = session.get(IntakeJob, job_id)
        assert stored.status == "queued"  # recorded, though nothing could be queued
        stored.enqueued_at = datetime.now(UTC) - timedelta(minutes=2)  # as if a minute had passed
        session.commit()
    celery_client.send_task("scheduled.sweep_intake").get(timeout=30)

    (finished,) = wait_for_jobs(committed_engine, [job_id])
    assert finished.status == "succeeded", finished.error


def _book_with_the_broker_at(process_environment, celery_client, salon, redis_url: str, clock_time: str):
    with ProcessHarness(
        dataclasses.replace(process_environment, redis_url=redis_url), client=celery_client
    ) as harness:
        api = harness.start_api()
        with api.client(headers={"Authorization": f"Bearer {salon.api_key}"}, timeout=30) as client:
            # A client that gives up after 10 s, as callers do: the broker must not hold the request hostage
            # (a result subscription on a down Redis did, for ~20 s).
            accepted = client.post(
                "/v1/bookings",
                json=body(salon, salon.at(booking_day(salon), clock_time), "+34612999006"),
                timeout=10,
            )
            ready = client.get("/ready")
        return accepted, ready, api.log_text()


def test_bookings_that_kill_or_hang_their_worker_are_failed_and_the_worker_goes_on(
    committed_engine, processes, celery_client, salon
):
    # A queue of its own: only the misbehaving worker consumes it.
    queue = f"misbehaving-{uuid.uuid4().hex[:8]}"
    processes.start_worker(queues=[queue], concurrency=1, name="misbehaving", app="tests.e2e.misbehaving_app")

    def submit(first_name: str, clock_time: str) -> str:
        payload = body(salon, salon.at(booking_day(salon), clock_time), "+34612999100")
        payload["client"]["first_name"] = first_name
        with UnitOfWork(salon.tenant.id) as uow:
            job, _ = intake.submit(
                uow,
                "booking",
                payload,
                None,
                datetime.now(UTC),
                lambda job_id, _: celery_client.send_task(
                    "bookings.process", args=[str(job_id)], queue=queue
                ),
            )
        return str(job.job_id)

    # The broker hands the message back after each crash (reject_on_worker_lost): without a cap, forever.
    (crashed,) = wait_for_jobs(committed_engine, [submit("Crash", "10:00")])
    assert crashed.status == "failed" and crashed.error["code"] == "internal_error"
    assert crashed.attempts == intake.RUN_FAILS_AFTER_STARTS + 1
    # The hard time limit kills the process and Celery acknowledges the message: without the worker's
    # main process failing the job, it would stay `running` until the sweeper (not running here) gave up.
    (hung,) = wait_for_jobs(committed_engine, [submit("Hang", "10:30")])
    assert hung.status == "failed" and hung.error["code"] == "internal_error"
    assert hung.attempts == 1
    (after,) = wait_for_jobs(committed_engine, [submit("Caller", "11:00")])
    assert after.status == "succeeded", after.error
    with Session(committed_engine) as session:
        booked = session.scalars(
            select(Appointment.status).where(Appointment.tenant_id == salon.tenant.id)
        ).all()
    assert booked == ["confirmed"]
