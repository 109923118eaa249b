"""What a business's plan allows: who may take bookings, and how many appointments a local month may hold.

Shared by booking (which enforces it) and availability (which offers only what a booking would accept).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ARRAY, DateTime, Select, Uuid, bindparam, func, select, text

from core.db import UnitOfWork
from core.errors import TenantNotAllowed
from core.models import NOT_COUNTED_STATUSES, Appointment, Subscription, SubscriptionPlan

BOOKABLE_TENANT_STATUSES = {"trial", "active", "past_due"}
LIVE_SUBSCRIPTION_STATUSES = ("active", "trialing", "past_due")


def plan_limit_of(tenant_id: Any) -> Select:
    """The plan's max_appointments_per_month from the tenant's latest live subscription (none: NULL), for a
    tenant id given as a parameter or as a column to correlate with."""
    return (
        select(SubscriptionPlan.max_appointments_per_month)
        .join(Subscription, Subscription.plan_id == SubscriptionPlan.id)
        .where(Subscription.tenant_id == tenant_id, Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES))
        .order_by(Subscription.current_period_end.desc())
        .limit(1)
    )


PLAN_LIMIT = plan_limit_of(bindparam("tenant_id"))


def check_bookable(name: str, subscription_status: str) -> None:
    """TenantNotAllowed("tenant_inactive") for a business whose subscription is suspended or cancelled."""
    if subscription_status not in BOOKABLE_TENANT_STATUSES:
        # Said without the subscription's state: the message may be shown to the business's clients.
        raise TenantNotAllowed(
            f"{name} cannot take bookings or changes at the moment.", code="tenant_inactive"
        )


def allowance(limit: int | None) -> int | None:
    """A plan's limit as a number of appointments, or None for no limit (no plan, or -1)."""
    return None if limit is None or limit < 0 else limit


def monthly_allowance(uow: UnitOfWork, tenant_id: uuid.UUID) -> int | None:
    return allowance(uow.session.scalar(PLAN_LIMIT, {"tenant_id": tenant_id}))


def month_start(instant: datetime | date, zone: ZoneInfo) -> datetime:
    """The local midnight that begins the month of `instant` (a date is read as a local date)."""
    day = instant.astimezone(zone).date() if isinstance(instant, datetime) else instant
    return datetime(day.year, day.month, 1, tzinfo=zone)


def next_month_start(start: datetime) -> datetime:
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


_besides = bindparam("besides", type_=Uuid())
_month_starts = bindparam("month_starts", type_=ARRAY(DateTime(timezone=True)))
_BOOKED_BY_MONTH = (
    select(func.width_bucket(Appointment.scheduled_start, _month_starts), func.count(Appointment.id))
    .where(
        Appointment.tenant_id == bindparam("tenant_id"),
        Appointment.deleted_at.is_(None),
        Appointment.status.not_in(NOT_COUNTED_STATUSES),
        Appointment.scheduled_start >= bindparam("since"),
        Appointment.scheduled_start < bindparam("until"),
        _besides.is_(None) | (Appointment.id != _besides),
    )
    .group_by(text("1"))  # by position: the bucket's expression holds a parameter
)


def booked_by_month(
    uow: UnitOfWork,
    tenant_id: uuid.UUID,
    zone: ZoneInfo,
    first: datetime | date,
    last: datetime | date,
    besides: uuid.UUID | None = None,
) -> dict[date, int]:
    """The appointments that count against the plan in each local month from `first`'s to `last`'s, by the
    month's first day (every month of the range, 0 for one without any), `besides` one (the appointment being
    booked or moved).

    The months' bounds are Python's (zoneinfo), as the booking's: PostgreSQL's timezone() reads some IANA
    names (CET, EET, MET, WET) as fixed-offset abbreviations, without their summer time."""
    starts = [month_start(first, zone)]
    final = month_start(last, zone)
    while starts[-1] < final:
        starts.append(next_month_start(starts[-1]))
    rows = uow.session.execute(
        _BOOKED_BY_MONTH,
        {
            "month_starts": starts,
            "tenant_id": tenant_id,
            "since": starts[0],
            "until": next_month_start(starts[-1]),
            "besides": besides,
        },
    )
    counts = dict(rows.all())  # by bucket: a month without appointments has no row
    return {start.date(): counts.get(bucket, 0) for bucket, start in enumerate(starts, start=1)}


def full_months(
    uow: UnitOfWork,
    tenant_id: uuid.UUID,
    zone: ZoneInfo,
    limit: int,
    first: datetime | date,
    last: datetime | date,
    besides: uuid.UUID | None = None,
) -> set[date]:
    """The local months from `first`'s to `last`'s (by their first day) that hold `limit` appointments
    already, `besides` one: nothing more can be booked in them."""
    booked = booked_by_month(uow, tenant_id, zone, first, last, besides)
    # Every month of the range, those without appointments too: a plan allowing none fills them all.
    return {month for month, count in booked.items() if count >= limit}
