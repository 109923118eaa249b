"""Plain functions that insert valid rows and return the model.

Each takes the session first, fills every required column with a value unique to this call (slugs,
emails, phones, references), flushes so the row exists for the rest of the test, and lets keyword
arguments override any column. Datetimes must be timezone-aware.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.dialects.postgresql import Range
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.models import (
    Appointment,
    AppointmentResource,
    Client,
    NotificationTemplate,
    Payment,
    Resource,
    ResourceBlock,
    ResourceSchedule,
    Service,
    ServiceResource,
    Subscription,
    SubscriptionPlan,
    Tenant,
    TenantUser,
    User,
)

# Allocations of these appointments no longer hold their resources.
INACTIVE_STATUSES = {"cancelled", "no_show", "rescheduled"}


def unique(prefix: str = "x") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def unique_phone() -> str:
    return f"+346{uuid.uuid4().int % 10**8:08d}"


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value


def _time(value: time | str) -> time:
    if value == "24:00":
        return time(0)  # a closing time's end of the day (ClosingTime)
    return value if isinstance(value, time) else time.fromisoformat(value)


def _save(session: Session, row: Any) -> Any:
    session.add(row)
    session.flush()
    return row


def make_user(session: Session, *, email: str | None = None, **columns: Any) -> User:
    columns.setdefault("password_hash", "not-a-real-hash")
    columns.setdefault("first_name", "Test")
    columns.setdefault("last_name", "User")
    return _save(session, User(email=email or f"{unique('user')}@example.com", **columns))


def make_tenant(
    session: Session, *, slug: str | None = None, timezone: str = "Europe/Madrid", **columns: Any
) -> Tenant:
    slug = slug or unique("tenant-")
    columns.setdefault("name", f"Tenant {slug}")
    columns.setdefault("business_type", "salon")
    return _save(session, Tenant(slug=slug, timezone=timezone, **columns))


def make_tenant_user(
    session: Session, tenant: Tenant, user: User, *, role: str = "owner", **columns: Any
) -> TenantUser:
    return _save(session, TenantUser(tenant_id=tenant.id, user_id=user.id, role=role, **columns))


def make_plan(
    session: Session, *, name: str | None = None, price_monthly: Decimal = Decimal("29.99"), **columns: Any
) -> SubscriptionPlan:
    return _save(
        session, SubscriptionPlan(name=name or unique("Plan "), price_monthly=price_monthly, **columns)
    )


def make_subscription(
    session: Session,
    tenant: Tenant,
    plan: SubscriptionPlan | None = None,
    *,
    status: str = "active",
    current_period_start: datetime | None = None,
    current_period_end: datetime | None = None,
    **columns: Any,
) -> Subscription:
    plan = plan or make_plan(session)
    start = _aware(current_period_start or datetime(2030, 1, 1, tzinfo=UTC), "current_period_start")
    end = _aware(current_period_end or start + timedelta(days=30), "current_period_end")
    columns.setdefault("billing_period", "monthly")
    return _save(
        session,
        Subscription(
            tenant_id=tenant.id,
            plan_id=plan.id,
            status=status,
            current_period_start=start,
            current_period_end=end,
            **columns,
        ),
    )


def make_payment(
    session: Session, subscription: Subscription, *, amount: Decimal = Decimal("29.99"), **columns: Any
) -> Payment:
    columns.setdefault("currency", "EUR")
    columns.setdefault("status", "succeeded")
    return _save(
        session,
        Payment(subscription_id=subscription.id, tenant_id=subscription.tenant_id, amount=amount, **columns),
    )


def make_service(
    session: Session,
    tenant: Tenant,
    *,
    duration_minutes: int = 30,
    buffer_time_minutes: int = 0,
    available_days: Sequence[int] | None = None,
    available_hours: dict[str, str] | None = None,
    name: str | None = None,
    **columns: Any,
) -> Service:
    """A service; available_days/available_hours left out take the schema defaults (Mon-Fri, 09:00-18:00)."""
    if available_days is not None:
        columns["available_days"] = list(available_days)
    if available_hours is not None:
        columns["available_hours"] = dict(available_hours)
    return _save(
        session,
        Service(
            tenant_id=tenant.id,
            name=name or unique("Service "),
            duration_minutes=duration_minutes,
            buffer_time_minutes=buffer_time_minutes,
            **columns,
        ),
    )


def make_resource(
    session: Session,
    tenant: Tenant,
    type: str = "staff",
    capacity: int | None = None,
    *,
    name: str | None = None,
    **columns: Any,
) -> Resource:
    return _save(
        session,
        Resource(
            tenant_id=tenant.id, type=type, capacity=capacity, name=name or unique("Resource "), **columns
        ),
    )


def link_service_resource(
    session: Session,
    service: Service,
    resource: Resource,
    is_required: bool = True,
    quantity_required: int = 1,
    preference_order: int = 0,
) -> ServiceResource:
    return _save(
        session,
        ServiceResource(
            service_id=service.id,
            resource_id=resource.id,
            is_required=is_required,
            quantity_required=quantity_required,
            preference_order=preference_order,
        ),
    )


def make_schedule(
    session: Session,
    resource: Resource,
    day_of_week: int,
    start: time | str,
    end: time | str,
    *,
    effective_from: date | None = None,
    effective_until: date | None = None,
    **columns: Any,
) -> ResourceSchedule:
    """A weekly working window (local wall-clock times; 0 = Sunday). effective_from None: since always."""
    return _save(
        session,
        ResourceSchedule(
            resource_id=resource.id,
            day_of_week=day_of_week,
            start_time=_time(start),
            end_time=_time(end),
            effective_from=effective_from,
            effective_until=effective_until,
            **columns,
        ),
    )


def make_block(
    session: Session,
    resource: Resource,
    start: datetime,
    end: datetime,
    rrule: str | None = None,
    *,
    block_type: str = "other",
    **columns: Any,
) -> ResourceBlock:
    """A block [start, end); with an RRULE ('FREQ=WEEKLY;BYDAY=MO') that interval is the first occurrence."""
    columns.setdefault("is_recurring", rrule is not None)
    return _save(
        session,
        ResourceBlock(
            resource_id=resource.id,
            start_datetime=_aware(start, "start"),
            end_datetime=_aware(end, "end"),
            block_type=block_type,
            recurrence_rule=rrule,
            **columns,
        ),
    )


def make_client(
    session: Session,
    tenant: Tenant,
    *,
    email: str | None = None,
    phone: str | None = None,
    first_name: str = "Client",
    **columns: Any,
) -> Client:
    return _save(
        session,
        Client(
            tenant_id=tenant.id,
            first_name=first_name,
            email=email or f"{unique('client')}@example.com",
            phone=phone or unique_phone(),
            **columns,
        ),
    )


def make_appointment(
    session: Session,
    tenant: Tenant,
    service: Service,
    client: Client,
    start: datetime,
    end: datetime | None = None,
    resources: Sequence[Resource] = (),
    buffer: timedelta | int | None = None,
    *,
    status: str = "scheduled",
    units: int = 1,
    **columns: Any,
) -> Appointment:
    """An appointment and one allocation per resource, occupying [start, end + buffer).

    end defaults to start + the service's duration, buffer (a timedelta or minutes) to the service's
    buffer. Allocations are inactive when the status is cancelled, no_show or rescheduled, as core.booking
    writes them (the database makes them exclusive for resources of capacity 1 or NULL).
    """
    start = _aware(start, "start")
    end = _aware(end, "end") if end is not None else start + timedelta(minutes=service.duration_minutes)
    if buffer is None:
        buffer = service.buffer_time_minutes
    if isinstance(buffer, int):
        buffer = timedelta(minutes=buffer)
    columns.setdefault("booking_reference", unique("REF-").upper())
    appointment = _save(
        session,
        Appointment(
            tenant_id=tenant.id,
            service_id=service.id,
            client_id=client.id,
            scheduled_start=start,
            scheduled_end=end,
            status=status,
            **columns,
        ),
    )
    for resource in resources:
        session.add(
            AppointmentResource(
                appointment_id=appointment.id,
                resource_id=resource.id,
                allocated_start=start,
                allocated_end=end,
                allocated_during=Range(start, end + buffer, bounds="[)"),
                active=status not in INACTIVE_STATUSES,
                units=units,
            )
        )
    session.flush()
    return appointment


def make_notification_template(
    session: Session,
    tenant: Tenant | None = None,
    *,
    type: str = "appointment_confirmed",
    channel: str = "email",
    **columns: Any,
) -> NotificationTemplate:
    """A template of the tenant (None: a system template). One per (tenant, type, channel, locale)."""
    columns.setdefault("name", unique("Template "))
    columns.setdefault("subject_template", "Appointment {{ service_name }}")
    columns.setdefault("body_template", "See you on {{ appointment_date }} at {{ appointment_time }}.")
    return _save(
        session,
        NotificationTemplate(tenant_id=tenant.id if tenant else None, type=type, channel=channel, **columns),
    )


# SQLSTATEs of the integrity errors the schema raises.
CHECK_VIOLATION = "23514"
UNIQUE_VIOLATION = "23505"
EXCLUSION_VIOLATION = "23P01"
NOT_NULL_VIOLATION = "23502"
FOREIGN_KEY_VIOLATION = "23503"


@contextmanager
def violates(session: Session, constraint: str | None, sqlstate: str) -> Iterator[None]:
    """The block must fail on exactly this constraint; a savepoint keeps the test's transaction usable.

    with violates(db, "appointment_resources_no_overlap", EXCLUSION_VIOLATION):
        make_appointment(db, ...)
    """
    with pytest.raises(IntegrityError) as caught, session.begin_nested():
        yield
        session.flush()
    error = caught.value.orig
    assert error.sqlstate == sqlstate, error
    if constraint is not None:
        assert error.diag.constraint_name == constraint, error
