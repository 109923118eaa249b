"""The booking workload the benches share: a database as every installation has it, and booking jobs
recorded as the API records them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from core import intake, seed
from core.db import UnitOfWork
from core.models import Appointment
from tests.scenarios import build_salon

SLOT_MINUTES = 15
SPREAD_BUSINESSES = 50


def seed_system_rows(database_url: str) -> None:
    """Plans and the system notification templates: a booking then renders and queues its
    confirmations, as it does in production."""
    engine = create_engine(database_url)
    try:
        with UnitOfWork(system=True, factory=sessionmaker(engine)) as uow:
            seed.seed_all(uow)
            uow.commit()
    finally:
        engine.dispose()


def record_booking_jobs(
    database_url: str, n: int, businesses: int, *, returning_clients: bool = True, days_ahead: int = 1
) -> list[str]:
    """n booking jobs over `businesses` new salons of one stylist and one chair, each job at its own slot,
    from `days_ahead` days after today on.

    Job i's client is number i mod ceil(n / businesses): over many salons, most of a salon's jobs are
    one returning client's (found, and counted again); at one salon, every job is a new client's. With
    `returning_clients=False`, every job is a new client's wherever it is."""
    engine = create_engine(database_url)
    per_business = -(-n // businesses)
    job_ids: list[str] = []
    try:
        with Session(engine, expire_on_commit=False) as session:
            salons = [
                build_salon(
                    session,
                    stylists=1,
                    chairs=1,
                    duration_minutes=SLOT_MINUTES,
                    opens="00:00",
                    closes="23:45",
                    max_advance_booking_days=120,
                )
                for _ in range(businesses)
            ]
            session.commit()
        # Today in the salons' zone: a UTC date is already yesterday there an hour before UTC midnight.
        first_day = datetime.now(ZoneInfo(salons[0].tenant.timezone)).date() + timedelta(days=days_ahead)
        slots_per_day = 24 * 60 // SLOT_MINUTES - 1
        for index in range(n):
            salon, k = salons[index % businesses], index // businesses
            client = index % per_business if returning_clients else index
            day = first_day + timedelta(days=k // slots_per_day)
            start = salon.at(day, "00:00") + timedelta(minutes=SLOT_MINUTES * (k % slots_per_day))
            payload = {
                "service_id": str(salon.haircut.id),
                "start": start.isoformat(),
                # Phone and email, as an online booking has them: an SMS and an email confirmation.
                "client": {
                    "first_name": "Bench",
                    "phone": f"+3461{client:07d}",
                    "email": f"client{client}@example.com",
                },
            }
            with UnitOfWork(salon.tenant.id, factory=sessionmaker(engine)) as uow:
                job, _ = intake.submit(uow, "booking", payload, None, datetime.now(UTC), lambda *_: None)
            job_ids.append(str(job.job_id))
    finally:
        engine.dispose()
    return job_ids


def record_change_jobs(database_url: str, booked: list[dict], kind: str) -> list[str]:
    """A `kind` job ("reschedule": the same time a week later; "cancel") for each booking job outcome in
    `booked`, recorded as the API records them."""
    engine = create_engine(database_url)
    job_ids: list[str] = []
    try:
        appointment_ids = [uuid.UUID(outcome["result"]["appointment_id"]) for outcome in booked]
        with Session(engine) as session:
            tenant_of = dict(
                session.execute(
                    select(Appointment.id, Appointment.tenant_id).where(Appointment.id.in_(appointment_ids))
                ).all()
            )
        for outcome, appointment_id in zip(booked, appointment_ids, strict=True):
            payload: dict = {"appointment_id": str(appointment_id)}
            if kind == "reschedule":
                payload["start"] = (
                    datetime.fromisoformat(outcome["result"]["start"]) + timedelta(days=7)
                ).isoformat()
            else:
                payload["reason"] = "Bench"
            with UnitOfWork(tenant_of[appointment_id], factory=sessionmaker(engine)) as uow:
                job, _ = intake.submit(uow, kind, payload, None, datetime.now(UTC), lambda *_: None)
            job_ids.append(str(job.job_id))
    finally:
        engine.dispose()
    return job_ids


def run_intake_jobs(factory: sessionmaker[Session], job_ids: list[str]) -> list[dict]:
    """Run the jobs one after another in this process, as a worker runs them; every one must succeed."""
    outcomes = []
    for job_id in job_ids:
        with UnitOfWork(system=True, factory=factory) as uow:
            outcome = intake.run(uow, job_id, now=datetime.now(UTC))
        if outcome["status"] != "succeeded":
            raise SystemExit(f"a job failed: {outcome}")
        outcomes.append(outcome)
    return outcomes


def overlapping_allocations(database_url: str) -> int:
    """Pairs of active allocations of one capacity-1 resource at overlapping times: double bookings.

    By the resource's capacity, not the allocations' `exclusive` flag: pairs of `exclusive` rows are what the
    exclusion constraint already refuses, so a count of them is 0 whatever went wrong (a flag written false)."""
    engine = create_engine(database_url, pool_size=1)
    try:
        with engine.connect() as connection:
            return connection.execute(
                text(
                    "SELECT count(*) FROM appointment_resources a JOIN appointment_resources b"
                    " ON a.resource_id = b.resource_id AND a.id < b.id AND a.allocated_during && b.allocated_during"
                    " JOIN resources r ON r.id = a.resource_id"
                    " WHERE a.active AND b.active AND COALESCE(r.capacity, 1) = 1"
                )
            ).scalar_one()
    finally:
        engine.dispose()
