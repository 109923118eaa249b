"""Outages under real processes: a Redis that restarts (keeping nothing, as a production Redis without
persistence does), a database connection that dies mid-booking, and a PostgreSQL that crashes and restarts
under running bookings. No accepted job may be lost, none may book twice, and the workers and the API must
carry on by themselves (docs/operations.md, section 4).

A server that is stopped here is a private one of the test's own (the machine's shared ones never are)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis
from alembic import command
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from core import intake
from core.db import UnitOfWork, make_engine
from core.models import Appointment, IntakeJob
from ops.database import alembic_config, create_database_if_missing
from ops.services import _redis_server_binary, delete_keys_with_prefix
from tests import factories
from tests.e2e.processes import ProcessHarness, client_app, free_port
from tests.private_postgres import PrivatePostgres
from tests.scenarios import build_salon, committed_salon

SWEEP_AFTER_SECONDS = 10  # instead of a minute, so that a lost message is sent again within the test


@pytest.fixture
def private_postgres():
    with PrivatePostgres() as server:
        create_database_if_missing(server.url)
        command.upgrade(alembic_config(server.url), "head")
        yield server


class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.server: subprocess.Popen | None = None

    def start(self) -> None:
        self.server = subprocess.Popen(
            [_redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                return
            except redis.RedisError:
                assert time.monotonic() < deadline, "the private Redis did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.kill()  # a crash: everything queued is gone
            self.server.wait(10)

    def restart(self) -> None:
        self.stop()
        time.sleep(1)
        self.start()


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stack(process_environment, private_redis):
    environment = dataclasses.replace(
        process_environment,
        redis_url=private_redis.url,
        extra_env={"VOICEAPPOINT_INTAKE_SWEEP_AFTER_SECONDS": str(SWEEP_AFTER_SECONDS)},
    )
    with ProcessHarness(environment, client=client_app(environment)) as harness:
        yield harness
        harness.client.close()


@pytest.fixture
def salon(committed_engine):
    with Session(committed_engine, expire_on_commit=False) as session:
        salon = build_salon(session, stylists=1, chairs=1, duration_minutes=15, with_api_key=True)
        session.commit()
    return salon


def starts(salon, count: int) -> list[datetime]:
    day = (datetime.now(salon.zone) + timedelta(days=3)).date()
    return [salon.at(day, "09:00") + timedelta(minutes=15 * n) for n in range(count)]


def body(salon, start: datetime, phone: str) -> dict:
    return {
        "service_id": str(salon.haircut.id),
        "start": start.isoformat(),
        "client": {"first_name": "Caller", "phone": phone},
    }


def jobs_once_ended(engine, job_ids: list[str], timeout: float) -> dict[str, IntakeJob]:
    deadline = time.monotonic() + timeout
    while True:
        with Session(engine) as session:
            jobs = {
                str(job.id): job
                for job in session.scalars(select(IntakeJob).where(IntakeJob.id.in_(job_ids)))
            }
        if all(job.status in ("succeeded", "failed") for job in jobs.values()) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.5)


def appointments(engine, salon) -> int:
    with Session(engine) as session:
        return session.scalar(
            select(func.count()).select_from(Appointment).where(Appointment.tenant_id == salon.tenant.id)
        )


def waiting_for_a_lock(database_url: str, statement_like: str) -> list[int]:
    """The backends of this run's database that wait for a lock in a statement like `statement_like`."""
    owner = create_engine(database_url)  # the application role may not see other sessions' statements
    try:
        with owner.connect() as connection:
            return list(
                connection.scalars(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = :database"
                        " AND wait_event_type = 'Lock' AND query ILIKE :like"
                    ),
                    {"database": make_url(database_url).database, "like": statement_like},
                )
            )
    finally:
        owner.dispose()


def held_in_a_lock_wait(committed_engine, database_url, lock: str, row_id, statement_like: str):
    """A transaction holding `lock` on a row, and a function that waits until a booking waits for it."""
    holder = committed_engine.connect()
    holder.begin()
    holder.execute(text(lock), {"id": row_id})

    def until_a_booking_waits(worker) -> list[int]:
        deadline = time.monotonic() + 20
        while not (waiting := waiting_for_a_lock(database_url, statement_like)):
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.1)
        return waiting

    return holder, until_a_booking_waits


def test_jobs_queued_when_redis_restarts_are_sent_again_and_all_end(
    committed_engine, stack, private_redis, salon
):
    worker = stack.start_worker(queues=["bookings", "scheduled"], concurrency=2, name="outage")
    stack.start_beat()
    api = stack.start_api()

    async def post_all() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {salon.api_key}"}
        async with httpx.AsyncClient(base_url=api.base_url, headers=headers, timeout=30) as client:
            requests = [body(salon, start, f"+3461700{n:04d}") for n, start in enumerate(starts(salon, 8))]
            return await asyncio.gather(*(client.post("/v1/bookings", json=request) for request in requests))

    os.killpg(worker.pid, signal.SIGSTOP)  # the messages wait in Redis
    try:
        accepted = asyncio.run(post_all())
        assert [response.status_code for response in accepted] == [202] * 8
        private_redis.restart()  # and are gone
    finally:
        os.killpg(worker.pid, signal.SIGCONT)

    jobs = jobs_once_ended(
        committed_engine, [response.json()["job_id"] for response in accepted], timeout=100
    )
    assert {job.status for job in jobs.values()} == {"succeeded"}, worker.log_tail(60)
    assert appointments(committed_engine, salon) == 8
    assert worker.is_running()


def test_a_worker_carries_on_when_redis_restarts_under_a_running_booking(
    committed_engine, database_url, stack, private_redis, salon
):
    """The running booking is stopped unacknowledged; the worker used to exit for good ("Unrecoverable
    error"), as recording the stopped task's state needs the Redis that had just gone."""
    worker = stack.start_worker(queues=["bookings", "scheduled"], concurrency=2, name="outage")
    stack.start_beat()
    api = stack.start_api()
    phone = "+34617200001"
    with Session(committed_engine, expire_on_commit=False) as session:
        client = factories.make_client(session, session.merge(salon.tenant), phone=phone, first_name="Caller")
        session.commit()
    holder, until_a_booking_waits = held_in_a_lock_wait(
        committed_engine,
        database_url,
        "SELECT id FROM clients WHERE id = :id FOR UPDATE",
        client.id,
        "%",  # any statement: only the booking waits for a lock here
    )
    try:
        with api.client(headers={"Authorization": f"Bearer {salon.api_key}"}, timeout=30) as http:
            job_id = http.post("/v1/bookings", json=body(salon, starts(salon, 1)[0], phone)).json()["job_id"]
        until_a_booking_waits(worker)
        private_redis.restart()
        time.sleep(3)
    finally:
        holder.close()

    assert worker.is_running(), worker.log_tail(30)
    # Its message went with Redis: the sweeper sends a job that has been `running` for five minutes again.
    with committed_engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE intake_jobs SET started_at = started_at - interval '6 minutes',"
                " enqueued_at = enqueued_at - interval '6 minutes' WHERE id = :id"
            ),
            {"id": job_id},
        )
    job = jobs_once_ended(committed_engine, [job_id], timeout=80)[job_id]
    assert job.status == "succeeded", (job.status, job.error, worker.log_tail(60))
    assert appointments(committed_engine, salon) == 1


def test_a_database_connection_dying_inside_the_allocation_is_retried_and_books_once(
    committed_engine, database_url, celery_client, process_environment, salon
):
    """The allocation's insert runs under advisory locks released at the end of its block; releasing them
    on the dead connection raised PendingRollbackError, which hid the transient error: the job failed
    (internal_error) instead of being retried."""
    with ProcessHarness(process_environment, client=celery_client) as harness:
        worker = harness.start_worker(queues=["bookings"], concurrency=1, name="pg-drop")
        # The insert's foreign-key check on the chair waits for this lock.
        holder, until_a_booking_waits = held_in_a_lock_wait(
            committed_engine,
            database_url,
            "SELECT id FROM resources WHERE id = :id FOR UPDATE",
            salon.chairs[0].id,
            "%appointment_resources%",
        )
        try:
            with UnitOfWork(salon.tenant.id) as uow:
                job, _ = intake.submit(
                    uow,
                    "booking",
                    body(salon, starts(salon, 1)[0], "+34617400001"),
                    None,
                    datetime.now(UTC),
                    lambda job_id, queue: celery_client.send_task(
                        "bookings.process", args=[str(job_id)], queue=queue
                    ),
                )
            [waiting] = until_a_booking_waits(worker)
            owner = create_engine(database_url)  # may end another session's backend
            with owner.connect() as connection:
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": waiting})
            owner.dispose()
        finally:
            holder.close()

        ended = jobs_once_ended(committed_engine, [str(job.job_id)], timeout=60)[str(job.job_id)]
    assert (ended.status, appointments(committed_engine, salon)) == ("succeeded", 1), (
        ended.error,
        worker.log_tail(40),
    )


def test_bookings_running_when_postgresql_crashes_are_all_booked_once_and_the_api_carries_on(
    private_postgres, process_environment, redis_prefix
):
    """Every connection of the workers and the API dies at once, mid-transaction, and the server is away
    while it recovers: the bookings caught in it are retried by their workers and booked once."""
    # The test's own sessions (setting up, checking) see every tenant's rows, as committed_engine's do.
    engine = make_engine(private_postgres.url, connect_args={"options": "-c app.system=on"})
    salon = committed_salon(engine, stylists=1, chairs=1, duration_minutes=15, with_api_key=True)
    # A prefix of its own: the run's session workers (on the shared database) must not take these jobs.
    environment = dataclasses.replace(
        process_environment, database_url=private_postgres.url, redis_prefix=f"{redis_prefix}pg-crash:"
    )
    try:
        with ProcessHarness(environment, client=client_app(environment)) as harness:
            worker = harness.start_worker(queues=["bookings"], concurrency=2, name="pg-crash")
            api = harness.start_api()
            headers = {"Authorization": f"Bearer {salon.api_key}"}
            # The bookings' inserts wait on the chair, so that the crash meets them inside their transactions.
            holder, until_a_booking_waits = held_in_a_lock_wait(
                engine,
                private_postgres.url,
                "SELECT id FROM resources WHERE id = :id FOR UPDATE",
                salon.chairs[0].id,
                "%appointment_resources%",
            )
            try:
                with api.client(headers=headers, timeout=30) as http:
                    accepted = [
                        http.post("/v1/bookings", json=body(salon, start, f"+3461750{n:04d}"))
                        for n, start in enumerate(starts(salon, 6))
                    ]
                assert [response.status_code for response in accepted] == [202] * 6
                until_a_booking_waits(worker)
                private_postgres.crash_and_restart()
                holder.invalidate()  # the crash ended its transaction: there is nothing to roll back
            finally:
                holder.close()

            job_ids = [response.json()["job_id"] for response in accepted]
            jobs = jobs_once_ended(engine, job_ids, timeout=90)
            assert {job.status for job in jobs.values()} == {"succeeded"}, worker.log_tail(60)
            assert max(job.attempts for job in jobs.values()) > 1  # the crash did meet running bookings
            assert appointments(engine, salon) == 6
            # The API's pool found the restarted server by itself.
            with api.client(headers=headers, timeout=30) as http:
                later = http.post(
                    "/v1/bookings?wait=20", json=body(salon, starts(salon, 7)[6], "+34617509999")
                )
            assert later.status_code == 201, later.text
            assert worker.is_running() and api.is_healthy()
    finally:
        engine.dispose()
        delete_keys_with_prefix(environment.redis_url, environment.redis_prefix)
