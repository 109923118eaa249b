"""Whole businesses for booking tests: a salon whose stylists share chairs, with an API key, and the
steps the booking tests share: a booking request, a committed booking, a booking job submitted and run.

Built with the factories, so the rows are the same whether a test rolls them back (`db`) or commits
them for other processes to see (e2e, benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import auth, booking, intake
from core.booking import BookingRequest
from core.clients import ClientDetails
from core.db import UnitOfWork
from core.models import Resource, Service, Tenant
from tests import factories

EVERY_DAY = [0, 1, 2, 3, 4, 5, 6]

# The booking tests' clock, and the day they book: a Monday morning and the Wednesday after it.
NOW = datetime(2027, 3, 1, 7, 0, tzinfo=UTC)
DAY = date(2027, 3, 3)


@dataclass
class Salon:
    tenant: Tenant
    stylists: list[Resource]
    chairs: list[Resource]
    haircut: Service  # any stylist (the client may choose) + a chair
    api_key: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tenant.timezone)

    def at(self, day: date, clock: str) -> datetime:
        """A local wall-clock time of the salon as an aware datetime."""
        return datetime.combine(day, time.fromisoformat(clock), tzinfo=self.zone)


def build_salon(
    session: Session,
    *,
    timezone: str = "Europe/Madrid",
    stylists: int = 2,
    chairs: int = 1,
    duration_minutes: int = 45,
    buffer_time_minutes: int = 0,
    opens: str = "09:00",
    closes: str = "18:00",
    with_api_key: bool = False,
    **service_columns,
) -> Salon:
    """A salon open every day; its haircut needs one of the stylists and every chair."""
    tenant = factories.make_tenant(session, timezone=timezone, settings={"slot_step_minutes": 15})
    service_columns.setdefault("min_advance_booking_hours", 0)
    service_columns.setdefault("max_advance_booking_days", 60)
    service_columns.setdefault("cancellation_policy_hours", 24)
    haircut = factories.make_service(
        session,
        tenant,
        name="Haircut",
        duration_minutes=duration_minutes,
        buffer_time_minutes=buffer_time_minutes,
        available_days=EVERY_DAY,
        available_hours={"start": "00:00", "end": "23:59"},
        base_price=25,
        **service_columns,
    )
    stylist_rows = [
        factories.make_resource(session, tenant, "staff", name=f"Stylist {i + 1}") for i in range(stylists)
    ]
    chair_rows = [
        factories.make_resource(session, tenant, "room", 1, name=f"Chair {i + 1}") for i in range(chairs)
    ]
    for order, stylist in enumerate(stylist_rows):
        factories.link_service_resource(session, haircut, stylist, is_required=False, preference_order=order)
    for chair in chair_rows:
        factories.link_service_resource(session, haircut, chair, is_required=True)
    for resource in stylist_rows + chair_rows:
        for day in EVERY_DAY:
            factories.make_schedule(session, resource, day, opens, closes)
    salon = Salon(tenant, stylist_rows, chair_rows, haircut)
    if with_api_key:
        salon.api_key = _api_key(session, tenant)
    return salon


def build_emailing_salon(session: Session) -> Salon:
    """The salon with an API key, and Spanish email templates for its confirmations and cancellations."""
    salon = build_salon(session, with_api_key=True)
    for kind in ("appointment_confirmed", "appointment_cancelled"):
        factories.make_notification_template(session, salon.tenant, type=kind, channel="email", locale="es")
    return salon


def request(salon, day=DAY, clock="10:00", phone="612 345 678", resource_ids=()):
    """A booking of the haircut for Lucía (phone and email), on DAY at 10:00 unless told otherwise."""
    return BookingRequest(
        service_id=salon.haircut.id,
        start=salon.at(day, clock),
        client=ClientDetails(first_name="Lucía", phone=phone, email="lucia@example.com"),
        resource_ids=tuple(resource_ids),
    )


def book(salon, req, now=NOW):
    """Books `req` in a unit of work of the salon's tenant, as of `now`, and commits it."""
    with UnitOfWork(salon.tenant.id) as uow:
        booked = booking.book(uow, req, now)
        uow.commit()
    return booked


def rows(db, model, salon):
    """How many rows of `model` the salon's tenant has."""
    return db.scalar(select(func.count()).select_from(model).where(model.tenant_id == salon.tenant.id))


def submit_job(salon, at=NOW):
    """A job that books the haircut on DAY at 10:00 for Lucía, submitted as of `at`; nothing is queued."""
    with UnitOfWork(salon.tenant.id) as uow:
        job, _ = intake.submit(
            uow,
            "booking",
            {
                "service_id": str(salon.haircut.id),
                "start": salon.at(DAY, "10:00").isoformat(),
                "client": {"first_name": "Lucía", "phone": "+34612345678"},
            },
            None,
            at,
            lambda *_: None,
        )
    return job


def run_job(job_id):
    """Runs the job as a worker runs it, as of NOW."""
    with UnitOfWork(system=True) as uow:  # as the worker runs it
        return intake.run(uow, job_id, NOW)


def committed_salon(engine, **columns) -> Salon:
    """`build_salon`, committed on `engine` (the `committed_engine` fixture): visible to every connection."""
    with Session(engine, expire_on_commit=False) as session:
        salon = build_salon(session, **columns)
        session.commit()
    return salon


def _api_key(session: Session, tenant: Tenant) -> str:
    row, key = auth.new_api_key(tenant.id, "tests")
    session.add(row)
    session.flush()
    return key
