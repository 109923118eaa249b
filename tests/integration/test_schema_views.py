"""The three views on known data: local dates in the tenant's time zone, half-open blocks, exact counts."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import text, update

from core.models import Appointment, Client, Resource, ResourceBlock, Service, Tenant
from tests.factories import (
    make_appointment,
    make_block,
    make_client,
    make_plan,
    make_resource,
    make_schedule,
    make_service,
    make_subscription,
    make_tenant,
)

NEW_YORK = ZoneInfo("America/New_York")


def _rows(db, view, tenant, order_by):
    return [
        dict(row)
        for row in db.execute(
            text(f"SELECT * FROM {view} WHERE tenant_id = :tenant ORDER BY {order_by}"), {"tenant": tenant.id}
        ).mappings()
    ]


def _soft_delete(db, model, row):
    db.execute(update(model).where(model.id == row.id).values(deleted_at=datetime(2030, 1, 1, tzinfo=UTC)))


# --- appointment_stats ----------------------------------------------------------------------------


def test_appointment_stats_groups_by_the_local_date_of_the_tenant(db):
    tenant = make_tenant(db, timezone="America/New_York")
    cut = make_service(db, tenant, name="Cut")
    color = make_service(db, tenant, name="Color")
    client = make_client(db, tenant)

    def book(service, start_utc, status="scheduled", final_price=None):
        return make_appointment(
            db, tenant, service, client, start_utc, status=status, final_price=final_price
        )

    # 03:00 UTC on the 15th is 22:00 on the 14th in New York: it belongs to the 14th.
    book(cut, datetime(2030, 1, 15, 3, 0, tzinfo=UTC), "completed", Decimal("50.00"))
    book(cut, datetime(2030, 1, 14, 15, 0, tzinfo=UTC), "completed", Decimal("30.00"))
    book(cut, datetime(2030, 1, 14, 16, 0, tzinfo=UTC), "cancelled")
    book(cut, datetime(2030, 1, 14, 17, 0, tzinfo=UTC), "no_show")
    book(cut, datetime(2030, 1, 15, 15, 0, tzinfo=UTC))
    book(color, datetime(2030, 1, 14, 18, 0, tzinfo=UTC), "completed", Decimal("100.00"))
    deleted = book(cut, datetime(2030, 1, 14, 19, 0, tzinfo=UTC), "completed", Decimal("999.00"))
    _soft_delete(db, Appointment, deleted)

    rows = _rows(db, "appointment_stats", tenant, "service_name, appointment_date")
    assert rows == [
        {
            "tenant_id": tenant.id,
            "service_id": color.id,
            "service_name": "Color",
            "appointment_date": date(2030, 1, 14),
            "total_appointments": 1,
            "completed_appointments": 1,
            "cancelled_appointments": 0,
            "no_show_appointments": 0,
            "revenue": Decimal("100.00"),
            "avg_price": Decimal("100.00"),
        },
        {
            "tenant_id": tenant.id,
            "service_id": cut.id,
            "service_name": "Cut",
            "appointment_date": date(2030, 1, 14),
            "total_appointments": 4,
            "completed_appointments": 2,
            "cancelled_appointments": 1,
            "no_show_appointments": 1,
            "revenue": Decimal("80.00"),
            "avg_price": Decimal("40.00"),
        },
        {
            "tenant_id": tenant.id,
            "service_id": cut.id,
            "service_name": "Cut",
            "appointment_date": date(2030, 1, 15),
            "total_appointments": 1,
            "completed_appointments": 0,
            "cancelled_appointments": 0,
            "no_show_appointments": 0,
            "revenue": None,
            "avg_price": None,
        },
    ]


def test_appointment_stats_east_of_utc_moves_late_evenings_to_the_next_day(db):
    tenant = make_tenant(db, timezone="Europe/Madrid")
    service = make_service(db, tenant)
    make_appointment(db, tenant, service, make_client(db, tenant), datetime(2030, 1, 14, 23, 30, tzinfo=UTC))
    [row] = _rows(db, "appointment_stats", tenant, "appointment_date")
    assert row["appointment_date"] == date(2030, 1, 15)


def test_appointment_stats_counts_revenue_and_average_price_of_completed_appointments_only(db):
    # A cancelled or no-show appointment may carry a price (quoted, or a cancellation fee): not revenue.
    tenant = make_tenant(db, timezone="UTC")
    service = make_service(db, tenant)
    client = make_client(db, tenant)
    day = datetime(2030, 1, 14, 9, 0, tzinfo=UTC)
    for hour, status, price in (
        (0, "completed", "30.00"),
        (1, "cancelled", "70.00"),
        (2, "no_show", "20.00"),
    ):
        make_appointment(
            db,
            tenant,
            service,
            client,
            day + timedelta(hours=hour),
            status=status,
            final_price=Decimal(price),
        )
    [row] = _rows(db, "appointment_stats", tenant, "appointment_date")
    assert (row["total_appointments"], row["revenue"], row["avg_price"]) == (
        3,
        Decimal("30.00"),
        Decimal("30.00"),
    )


# --- resource_availability ------------------------------------------------------------------------


def test_resource_availability_reads_blocks_as_half_open_and_never_multiplies_rows(db):
    tenant = make_tenant(db, timezone="Europe/Madrid")
    now = db.scalar(text("SELECT now()"))
    today = db.scalar(text("SELECT (now() AT TIME ZONE 'Europe/Madrid')::date"))
    hour = timedelta(hours=1)

    blocked = make_resource(db, tenant, name="blocked")
    make_schedule(db, blocked, 1, "09:00", "13:00")
    make_schedule(db, blocked, 1, "15:00", "19:00")
    make_block(db, blocked, now - hour, now + hour)

    block_ended = make_resource(db, tenant, name="block ended")
    make_schedule(db, block_ended, 2, "09:00", "17:00")
    make_block(db, block_ended, now - hour, now)  # [now - 1h, now) no longer covers now

    block_starting = make_resource(db, tenant, name="block starting")
    make_block(db, block_starting, now, now + hour)  # [now, now + 1h) covers now

    deleted_block = make_resource(db, tenant, name="deleted block")
    block = make_block(db, deleted_block, now - hour, now + hour)
    _soft_delete(db, ResourceBlock, block)

    not_in_effect = make_resource(db, tenant, name="schedules not in effect")
    make_schedule(db, not_in_effect, 3, "09:00", "17:00", effective_from=today + timedelta(days=10))
    make_schedule(db, not_in_effect, 3, "09:00", "17:00", effective_until=today - timedelta(days=1))
    make_schedule(db, not_in_effect, 4, "09:00", "17:00", is_active=False)
    make_schedule(db, not_in_effect, 5, "10:00", "11:00", effective_from=today, effective_until=today)

    inactive = make_resource(db, tenant, name="inactive", is_active=False)
    make_schedule(db, inactive, 1, "09:00", "17:00")
    deleted = make_resource(db, tenant, name="deleted")
    _soft_delete(db, Resource, deleted)

    rows = _rows(db, "resource_availability", tenant, "name, start_time")
    assert [(row["name"], row["day_of_week"], row["start_time"], row["is_available"]) for row in rows] == [
        ("block ended", 2, time(9), True),
        ("block starting", None, None, False),
        ("blocked", 1, time(9), False),
        ("blocked", 1, time(15), False),
        ("deleted block", None, None, True),
        ("schedules not in effect", 5, time(10), True),
    ]
    assert {row["type"] for row in rows} == {"staff"}


# --- tenant_dashboard -----------------------------------------------------------------------------


def _local(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), NEW_YORK).astimezone(UTC)


def test_tenant_dashboard_counts_exactly_in_the_tenant_time_zone(db):
    tenant = make_tenant(db, timezone="America/New_York", name="Brooklyn Cuts", subscription_status="active")
    now = db.scalar(text("SELECT now()"))
    today = now.astimezone(NEW_YORK).date()

    services = [make_service(db, tenant) for _ in range(3)]
    _soft_delete(db, Service, make_service(db, tenant))
    resources = [make_resource(db, tenant), make_resource(db, tenant, "room", 2)]
    make_resource(db, tenant, is_active=False)  # inactive still counts: only deletion removes it
    _soft_delete(db, Resource, make_resource(db, tenant))
    clients = [make_client(db, tenant) for _ in range(4)]
    _soft_delete(db, Client, make_client(db, tenant))

    def book(start, index, **columns):
        return make_appointment(
            db,
            tenant,
            services[index % 3],
            clients[index % 4],
            start,
            resources=[resources[index % 2]],
            **columns,
        )

    book(_local(today, 0, 30), 0)  # today, upcoming
    book(_local(today, 23, 30), 1)  # today (tomorrow in UTC), upcoming
    book(_local(today - timedelta(days=1), 23, 30), 2)  # yesterday (today in UTC): neither
    book(_local(today + timedelta(days=1), 10), 3)  # upcoming
    book(_local(today, 12), 4, status="cancelled")  # today, upcoming: the seed counts every status
    _soft_delete(db, Appointment, book(_local(today, 14), 5))  # deleted: neither
    book(_local(today - timedelta(days=7), 10), 6)  # last week: neither

    starter, growth, legacy = (
        make_plan(db, name="Starter"),
        make_plan(db, name="Growth"),
        make_plan(db, name="Old"),
    )
    make_subscription(
        db, tenant, starter, current_period_start=now, current_period_end=now + timedelta(days=30)
    )
    latest = make_subscription(
        db, tenant, growth, current_period_start=now, current_period_end=now + timedelta(days=60)
    )
    make_subscription(
        db,
        tenant,
        legacy,
        status="cancelled",
        current_period_start=now,
        current_period_end=now + timedelta(days=90),
    )

    other = make_tenant(db, timezone="Europe/Madrid")
    make_service(db, other)
    gone = make_tenant(db)
    _soft_delete(db, Tenant, gone)

    assert _rows(db, "tenant_dashboard", tenant, "tenant_id") == [
        {
            "tenant_id": tenant.id,
            "business_name": "Brooklyn Cuts",
            "subscription_status": "active",
            "total_services": 3,
            "total_resources": 3,
            "total_clients": 4,
            "upcoming_appointments": 4,
            "today_appointments": 3,
            "plan_id": growth.id,
            "plan_name": "Growth",
            "subscription_expires": latest.current_period_end,
        }
    ]
    [other_row] = _rows(db, "tenant_dashboard", other, "tenant_id")
    assert (other_row["total_services"], other_row["total_clients"], other_row["today_appointments"]) == (
        1,
        0,
        0,
    )
    assert other_row["plan_id"] is None and other_row["plan_name"] is None
    assert _rows(db, "tenant_dashboard", gone, "tenant_id") == []


def test_tenant_dashboard_counts_an_appointment_at_local_midnight_as_today_and_upcoming(db):
    # "upcoming" is from the start of the local today on, inclusive (the seed's `>= CURRENT_DATE`).
    tenant = make_tenant(db, timezone="America/New_York")
    today = db.scalar(text("SELECT now()")).astimezone(NEW_YORK).date()
    service, client = make_service(db, tenant), make_client(db, tenant)
    make_appointment(db, tenant, service, client, _local(today, 0))
    make_appointment(db, tenant, service, client, _local(today, 0) - timedelta(minutes=30))
    [row] = _rows(db, "tenant_dashboard", tenant, "tenant_id")
    assert (row["upcoming_appointments"], row["today_appointments"]) == (1, 1)
