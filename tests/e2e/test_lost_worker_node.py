"""A worker node lost in the middle of a booking, under real processes.

A worker node that stops answering in the middle of a booking (a VM paused or migrated, a network partition, a
host that died without resetting its connections) is simulated by stopping every process of one worker with
SIGSTOP: nothing closes its database connection, and its booking's transaction stays open with its locks."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from core import intake
from core.db import UnitOfWork
from core.models import Appointment, IntakeJob
from tests import factories
from tests.e2e.processes import ProcessHarness, client_app
from tests.scenarios import build_salon

# The workers of this test end a transaction left idle this long (the default is longer; see core/config.py).
IDLE_TIMEOUT_MS = 5_000


@pytest.fixture
def salon(committed_engine):
    with Session(committed_engine, expire_on_commit=False) as session:
        salon = build_salon(session, stylists=1, chairs=0, duration_minutes=30)
        session.commit()
    return salon


def _day(salon):
    return (datetime.now(salon.zone) + timedelta(days=3)).date()


def _payload(salon, clock: str, phone: str) -> dict:
    return {
        "service_id": str(salon.haircut.id),
        "start": salon.at(_day(salon), clock).isoformat(),
        "client": {"first_name": "Caller", "phone": phone},
    }


def _submit(salon, payload: dict, send) -> str:
    with UnitOfWork(salon.tenant.id) as uow:
        job, _ = intake.submit(uow, "booking", payload, None, datetime.now(UTC), send)
    return str(job.job_id)


def _owner_scalars(database_url: str, sql: str, **params) -> list:
    owner = create_engine(database_url)  # the application role may not read other sessions' activity
    try:
        with owner.connect() as connection:
            return list(
                connection.scalars(text(sql), {"database": make_url(database_url).database, **params})
            )
    finally:
        owner.dispose()


def _until(condition, timeout: float, what: str, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}\n{log()}"
        time.sleep(0.1)
    return value


def _jobs(engine, job_ids: list[str]) -> dict[str, IntakeJob]:
    with Session(engine) as session:
        return {str(j.id): j for j in session.scalars(select(IntakeJob).where(IntakeJob.id.in_(job_ids)))}


def test_a_worker_node_lost_mid_booking_does_not_block_the_stylists_day_and_its_job_is_redone(
    committed_engine, database_url, process_environment, salon
):
    """J1's worker stops answering once its booking holds the stylist at 10:00 (uncommitted) and the job's row.
    The sweeper re-sends J1 to a live worker (docs/operations.md: "A lost worker node ... the sweeper re-sends
    those jobs sooner"); meanwhile a booking of the same stylist at 10:00 (J2) and one at 14:00 (J3) arrive.
    All three must end (J1 or J2 booked at 10:00, J3 at 14:00) once the lost node's transaction has been idle
    for the configured time; PostgreSQL by default keeps it, and its locks, for as long as the node is gone."""
    queue_lost, queue_live = (f"crash-{name}-{uuid.uuid4().hex[:8]}" for name in ("lost", "live"))
    environment = dataclasses.replace(
        process_environment,
        extra_env={"VOICEAPPOINT_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": str(IDLE_TIMEOUT_MS)},
    )
    phone = "+34617900001"
    with Session(committed_engine, expire_on_commit=False) as session:
        client = factories.make_client(session, session.merge(salon.tenant), phone=phone, first_name="Caller")
        session.commit()
    with ProcessHarness(environment, client=client_app(environment)) as harness:
        lost = harness.start_worker(queues=[queue_lost], concurrency=1, name="lost-node")
        live = harness.start_worker(queues=[queue_live], concurrency=3, name="live-node")

        def send_to(queue):
            return lambda job_id, _: harness.client.send_task(
                "bookings.process", args=[str(job_id)], queue=queue, ignore_result=True
            )

        # J1 (a returning client) waits for the client's row, after its allocation: stop its node there.
        holder = committed_engine.connect()
        holder.begin()
        holder.execute(text("SELECT id FROM clients WHERE id = :id FOR NO KEY UPDATE"), {"id": client.id})
        j1 = _submit(salon, _payload(salon, "10:00", phone), send_to(queue_lost))
        waiting_sql = (
            "SELECT pid FROM pg_stat_activity WHERE datname = :database AND wait_event_type = 'Lock'"
            " AND query LIKE 'UPDATE clients%'"
        )
        [backend] = _until(
            lambda: _owner_scalars(database_url, waiting_sql),
            30,
            "J1 never reached its client",
            lost.log_tail,
        )
        os.killpg(lost.pid, signal.SIGSTOP)
        try:
            holder.rollback()  # J1's UPDATE completes; its node sends nothing more: idle in transaction
            holder.close()
            state_sql = "SELECT state FROM pg_stat_activity WHERE pid = :pid"
            _until(
                lambda: _owner_scalars(database_url, state_sql, pid=backend) == ["idle in transaction"],
                10,
                "J1's backend is not idle in transaction",
            )
            # What the sweeper does with a job `running` too long, and two more bookings of the stylist's day.
            send_to(queue_live)(j1, None)
            j2 = _submit(salon, _payload(salon, "10:00", "+34617900002"), send_to(queue_live))
            j3 = _submit(salon, _payload(salon, "14:00", "+34617900003"), send_to(queue_live))

            deadline = time.monotonic() + IDLE_TIMEOUT_MS / 1000 + 35
            while time.monotonic() < deadline:
                jobs = _jobs(committed_engine, [j1, j2, j3])
                if all(job.status in intake.FINISHED for job in jobs.values()):
                    break
                time.sleep(0.5)
            lost_backend = _owner_scalars(database_url, state_sql, pid=backend)
            statuses = {name: jobs[job_id].status for name, job_id in (("J1", j1), ("J2", j2), ("J3", j3))}
            assert set(statuses.values()) <= set(intake.FINISHED), (
                f"after {IDLE_TIMEOUT_MS / 1000 + 35:.0f} s: {statuses}; the lost node's backend: {lost_backend}\n"
                + live.log_tail(15)
            )
        finally:
            os.killpg(lost.pid, signal.SIGCONT)

        assert jobs[j3].status == "succeeded", jobs[j3].error
        assert sorted(jobs[j].status for j in (j1, j2)) == ["failed", "succeeded"]
        # The lost node, back, finds its connection gone and its job done: nothing is booked twice.
        time.sleep(5)
        assert _jobs(committed_engine, [j1])[j1].status == jobs[j1].status
        with Session(committed_engine) as session:
            booked = session.scalar(
                select(func.count())
                .select_from(Appointment)
                .where(Appointment.tenant_id == salon.tenant.id, Appointment.status != "cancelled")
            )
        assert booked == 2
        assert lost.is_running()
