"""The availability loader against a slow reference that reads the same rows with plain SQL.

`find_slots` (as the API calls it: `read_window`, then `plan_window`) turns rows into the planner's plain
input with one set-based statement and a windowed expansion of the recurring blocks. The reference below has
none of that: it reads every row of the service's resources with plain SQL, applies the documented rules
itself (which resources count, which schedules, blocks and allocations are live, every occurrence of a
recurring block walked from its first, EXDATEs named in the tenant's zone, a UTC, or a TZID), and hands the
result to the oracle's `judge` (tests/availability_oracle.py), which walks every grid time.
Small random calendars are built as real rows around the 2027 clock changes of zones with DST; check_slot (the
booking's check, which reads the slot's own date) and nearest_alternatives are compared on the same rows.

First, hand-written cases: a defect found that way (a plan allowing no appointments), and the row-reading
rules the random cases exercise, each on its own (blocks across midnight and a clock change, recurring blocks
with EXDATE/UNTIL/COUNT/BYDAY on the tenant's wall clock, buffers across midnight, shared capacity).
"""

from __future__ import annotations

import os
import random
import uuid
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import rrulestr
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from core import availability, booking
from core.availability import (
    ResourceCalendar,
    ResourceNeed,
    ServiceCalendar,
    ServiceRules,
    Slot,
    WorkingWindow,
    check_slot,
    find_slots,
    nearest_alternatives,
)
from core.booking import BookingRequest
from core.clients import ClientDetails
from core.config import get_settings
from core.db import UnitOfWork
from core.errors import InvalidRequest, LimitReached, SlotUnavailable
from tests import factories as f
from tests.availability_oracle import oracle_slots

ONE_DAY = timedelta(days=1)
EVERY_DAY = [0, 1, 2, 3, 4, 5, 6]
MADRID, NEW_YORK = ZoneInfo("Europe/Madrid"), ZoneInfo("America/New_York")
NOW = datetime(2027, 2, 20, 9, 0, tzinfo=UTC)
# Seeds of the random cases (about 10 s together); AVAILABILITY_ROWS_SEEDS=first:last runs others, and
# AVAILABILITY_ROWS_DUMP=1 prints a failing case's rows.
_first, _last = (int(n) for n in os.environ.get("AVAILABILITY_ROWS_SEEDS", "0:40").split(":"))
SEEDS = range(_first, _last)
CHECK_SEEDS = range(_first, _first + (_last - _first) // 3)


def at(day: date, clock: str, zone: ZoneInfo = MADRID) -> datetime:
    return datetime.combine(day, time.fromisoformat(clock), tzinfo=zone).astimezone(UTC)


def by_date(slots: list[Slot], zone: ZoneInfo = MADRID) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for slot in slots:
        local = slot.start.astimezone(zone)
        out.setdefault(f"{local:%a %d}", []).append(f"{local:%H:%M}")
    return out


def open_all_day(
    db, zone: str = "Europe/Madrid", step: int = 60, duration: int = 60, buffer: int = 0, **service
):
    """A business open every day, all day, with one resource that works all day (its shift ends at 24:00)."""
    tenant = f.make_tenant(db, timezone=zone, settings={"slot_step_minutes": step})
    service.setdefault("available_hours", {})
    offered = f.make_service(
        db,
        tenant,
        duration_minutes=duration,
        buffer_time_minutes=buffer,
        available_days=EVERY_DAY,
        min_advance_booking_hours=0,
        max_advance_booking_days=90,
        **service,
    )
    resource = f.make_resource(db, tenant, name="Ana")
    f.link_service_resource(db, offered, resource)
    for day in EVERY_DAY:
        f.make_schedule(db, resource, day, "00:00", "24:00")
    return tenant, offered, resource


def slots_of(tenant, service, first: date, last: date, now: datetime = NOW) -> list[Slot]:
    with UnitOfWork(tenant.id) as uow:
        return find_slots(uow, service.id, first, last, now).slots


# --- defects ----------------------------------------------------------------------------------------------


def test_a_plan_allowing_no_appointments_a_month_offers_no_slots(db):
    # max_appointments_per_month = 0 (-1 is "unlimited"): the booking refuses every start with
    # plan_limit_reached (booking._count_month: 0 >= 0), but availability closed only the months that already
    # held an appointment (plans.full_months looked at the months booked_by_month returned, never an empty
    # one), so it offered slots that no booking accepts ("only what a booking would accept").
    tenant, service, resource = open_all_day(db)
    f.make_subscription(db, tenant, f.make_plan(db, max_appointments_per_month=0), status="active")
    monday = date(2027, 3, 1)
    offered = slots_of(tenant, service, monday, monday)
    request = BookingRequest(
        service_id=service.id,
        start=at(monday, "10:00"),
        client=ClientDetails(first_name="Lucía", phone="612 345 678"),
    )
    with UnitOfWork(tenant.id) as uow, pytest.raises(LimitReached) as refused:
        booking.book(uow, request, NOW)
    assert refused.value.code == "plan_limit_reached"
    assert offered == []


# --- the rows the loader reads, on the days the clocks change ---------------------------------------------


def test_a_block_across_midnight_and_the_spring_forward_gap_is_read_on_both_dates(db):
    # Madrid, Sunday 28 March 2027: 02:00 becomes 03:00. The block runs Saturday 22:00 to Sunday 04:00 (five
    # real hours). The service's 30-minute buffer may run over it: Saturday 21:00 is offered.
    tenant, service, resource = open_all_day(db, buffer=30)
    saturday, sunday = date(2027, 3, 27), date(2027, 3, 28)
    f.make_block(db, resource, at(saturday, "22:00"), at(sunday, "04:00"))
    found = by_date(slots_of(tenant, service, saturday, sunday))
    assert found["Sat 27"] == [f"{h:02d}:00" for h in range(0, 22)]
    assert found["Sun 28"] == [f"{h:02d}:00" for h in range(4, 24)]  # 02:00 does not exist; 03:00 is blocked
    # Asked for the Sunday alone: the block, which began the day before, is read too.
    assert by_date(slots_of(tenant, service, sunday, sunday)) == {"Sun 28": found["Sun 28"]}


def test_recurring_blocks_on_the_tenants_wall_clock_with_exdate_until_and_count(db):
    # New York (clocks forward on Sunday 14 March 2027). Lunch Mondays and Wednesdays 12:00-13:00 local, first on
    # 1 March (EST), until Wednesday 17 March 12:00 EDT (16:00Z, included); two occurrences excluded, one named
    # on the business's wall clock, one in another zone's (12:00 EST is 18:00 in Madrid). A second block: 13:00
    # on two days (COUNT=2) from Tuesday 16 March.
    tenant, service, resource = open_all_day(
        db, zone="America/New_York", available_hours={"start": "11:00", "end": "14:00"}
    )
    lunch = at(date(2027, 3, 1), "12:00", NEW_YORK)
    f.make_block(
        db,
        resource,
        lunch,
        lunch + timedelta(hours=1),
        "RRULE:FREQ=WEEKLY;BYDAY=MO,WE;UNTIL=20270317T160000Z\n"
        "EXDATE:20270308T120000\n"
        "EXDATE;TZID=Europe/Madrid:20270310T180000",
    )
    meeting = at(date(2027, 3, 16), "13:00", NEW_YORK)
    f.make_block(db, resource, meeting, meeting + timedelta(hours=1), "FREQ=DAILY;COUNT=2")
    found = by_date(slots_of(tenant, service, date(2027, 3, 8), date(2027, 3, 22)), NEW_YORK)
    assert found["Mon 08"] == found["Wed 10"] == ["11:00", "12:00", "13:00"]  # excluded
    assert found["Mon 15"] == ["11:00", "13:00"]  # 12:00 EDT: the wall clock, not the UTC time, repeats
    assert found["Tue 16"] == ["11:00", "12:00"]
    assert found["Wed 17"] == ["11:00"]  # the last lunch (UNTIL is inclusive) and the second meeting
    assert found["Thu 18"] == found["Mon 22"] == ["11:00", "12:00", "13:00"]


def test_an_allocations_buffer_across_midnight_and_one_after_the_last_date_are_read(db):
    # 60-minute slots with a 30-minute buffer, 15-minute grid. Monday 23:00 an appointment of another service
    # (45 minutes + its 30-minute buffer) occupies the resource until Tuesday 00:15; Wednesday 01:00 another
    # one starts. Asked for Tuesday alone, both are read: one before Tuesday begins, one an hour after it ends
    # (Tuesday 23:45 ends at 00:45 and is occupied until 01:15).
    tenant, service, resource = open_all_day(db, step=15, buffer=30)
    other = f.make_service(db, tenant, duration_minutes=45, buffer_time_minutes=30)
    client = f.make_client(db, tenant)
    monday, tuesday, wednesday = date(2027, 3, 1), date(2027, 3, 2), date(2027, 3, 3)
    f.make_appointment(db, tenant, other, client, at(monday, "23:00"), resources=[resource])
    f.make_appointment(db, tenant, other, client, at(wednesday, "01:00"), resources=[resource])
    # Cancelled and no-show appointments hold nothing.
    for status in ("cancelled", "no_show"):
        f.make_appointment(
            db, tenant, other, client, at(tuesday, "12:00"), resources=[resource], status=status
        )
    found = by_date(slots_of(tenant, service, tuesday, tuesday))["Tue 02"]
    assert found[0] == "00:15"  # 00:00 would overlap Monday's appointment, occupied until 00:15
    assert "12:00" in found
    assert found[-1] == "23:30"  # occupied until 01:00, when Wednesday's begins


def test_shared_capacity_counts_overlapping_allocations_of_different_lengths(db):
    # A room for two: one appointment holds a place 10:00-12:00, another 10:30-11:00. A 30-minute class
    # with a 15-minute buffer needs one place at every instant of [start, start + 45 minutes).
    tenant, service, resource = open_all_day(
        db, step=30, duration=30, buffer=15, available_hours={"start": "09:00", "end": "13:00"}
    )
    resource.capacity = 2
    db.flush()
    long, short = (f.make_service(db, tenant, duration_minutes=m, buffer_time_minutes=0) for m in (120, 30))
    client = f.make_client(db, tenant)
    monday = date(2027, 3, 1)
    f.make_appointment(db, tenant, long, client, at(monday, "10:00"), resources=[resource])
    f.make_appointment(db, tenant, short, client, at(monday, "10:30"), resources=[resource])
    f.make_appointment(
        db, tenant, long, client, at(monday, "09:00"), resources=[resource], units=2, status="cancelled"
    )
    found = by_date(slots_of(tenant, service, monday, monday))["Mon 01"]
    # 10:00's buffer reaches 10:30, when both places are taken; 11:00 meets only the long one.
    assert found == ["09:00", "09:30", "11:00", "11:30", "12:00", "12:30"]


# --- the reference: plain SQL, then the documented rules --------------------------------------------------


def _clock(value: str) -> time:
    """A time read as text ('24:00:00' is the end of the day, which WorkingWindow writes as 00:00)."""
    hours, minutes, seconds = (int(part) for part in value.split(":"))
    return time(0) if hours == 24 else time(hours, minutes, seconds)


def _instant(value: str, zone: ZoneInfo) -> datetime:
    """A DATE-TIME of an EXDATE: `...Z` is UTC, else a wall-clock time of `zone` (its first pass)."""
    value = value.strip()
    utc = value.upper().endswith("Z")
    moment = datetime.strptime(value.rstrip("Zz"), "%Y%m%dT%H%M%S")
    return moment.replace(tzinfo=UTC if utc else zone).astimezone(UTC)


def reference_occurrences(
    start: datetime, end: datetime, rule: str | None, zone: ZoneInfo, horizon: datetime
) -> list[tuple[datetime, datetime]]:
    """Every occurrence of a block, walked from the first on the tenant's wall clock, up to `horizon`."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if not rule:
        return [(start, end)]
    rrule_line, excluded = None, set()
    for line in rule.strip().splitlines():
        head, colon, values = line.strip().partition(":")
        name, *params = head.split(";")
        if colon and name.upper() == "EXDATE":
            named = [p.split("=", 1)[1] for p in params if p.upper().startswith("TZID=")]
            for value in values.split(","):
                excluded.add(_instant(value, ZoneInfo(named[0]) if named else zone))
        else:
            rrule_line = line.strip()
    starts = {start}
    for occurrence in rrulestr(rrule_line, dtstart=start.astimezone(zone)):
        if occurrence.astimezone(UTC) > horizon:
            break
        starts.add(occurrence.astimezone(UTC))
    return [(s, s + (end - start)) for s in sorted(starts - excluded)]


def reference_slots(
    db, service_id: uuid.UUID, date_from: date, date_to: date, now: datetime, resource_id=None
) -> list[Slot]:
    service = db.execute(
        text(
            "SELECT s.*, t.timezone, t.settings FROM services s JOIN tenants t ON t.id = s.tenant_id"
            " WHERE s.id = :id"
        ),
        {"id": service_id},
    ).one()
    zone = ZoneInfo(service.timezone)
    step = (service.settings or {}).get("slot_step_minutes")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 < step <= 1440:
        step = get_settings().default_slot_step_minutes
    rules = ServiceRules(
        duration_minutes=service.duration_minutes,
        buffer_time_minutes=service.buffer_time_minutes,
        available_days=None if service.available_days is None else tuple(service.available_days),
        available_hours=service.available_hours or None,
        min_advance_booking_hours=service.min_advance_booking_hours,
        max_advance_booking_days=service.max_advance_booking_days,
        slot_step_minutes=step,
    )
    links = db.execute(
        text(
            "SELECT sr.resource_id, sr.quantity_required, sr.is_required, sr.preference_order,"
            " r.capacity, r.is_active AND r.deleted_at IS NULL AND r.tenant_id = :tenant AS usable"
            " FROM service_resources sr JOIN resources r ON r.id = sr.resource_id WHERE sr.service_id = :id"
        ),
        {"id": service_id, "tenant": service.tenant_id},
    ).all()
    needs, calendars = [], []
    horizon = datetime.combine(date_to + 3 * ONE_DAY, time(), tzinfo=UTC)
    for link in links:
        if not link.usable and not link.is_required:
            continue  # an inactive or deleted candidate is ignored
        needs.append(
            ResourceNeed(link.resource_id, link.quantity_required, link.is_required, link.preference_order)
        )
        if not link.usable:
            continue  # an unusable required resource: no calendar, so it never works
        windows = tuple(
            WorkingWindow(
                row.day_of_week, _clock(row.s), _clock(row.e), row.effective_from, row.effective_until
            )
            for row in db.execute(
                text(
                    "SELECT day_of_week, start_time::text AS s, end_time::text AS e, effective_from,"
                    " effective_until FROM resource_schedules WHERE resource_id = :r AND is_active"
                ),
                {"r": link.resource_id},
            )
        )
        blocks = tuple(
            span
            for row in db.execute(
                text(
                    "SELECT start_datetime, end_datetime, recurrence_rule FROM resource_blocks"
                    " WHERE resource_id = :r AND deleted_at IS NULL"
                ),
                {"r": link.resource_id},
            )
            for span in reference_occurrences(
                row.start_datetime, row.end_datetime, row.recurrence_rule, zone, horizon
            )
        )
        allocations = tuple(
            (row.lo, row.hi, row.units)
            for row in db.execute(
                text(
                    "SELECT lower(allocated_during) AS lo, upper(allocated_during) AS hi, units"
                    " FROM appointment_resources WHERE resource_id = :r AND active"
                ),
                {"r": link.resource_id},
            )
        )
        calendars.append(ResourceCalendar(link.resource_id, link.capacity, windows, blocks, allocations))
    calendar = ServiceCalendar(service_id, service.timezone, rules, tuple(needs), tuple(calendars))
    if resource_id is not None and resource_id not in {need.resource_id for need in needs}:
        # Not one of the resources that serve it (an inactive candidate does not).
        raise InvalidRequest("not eligible", code="resource_not_eligible")
    slots = oracle_slots(calendar, now, date_from, date_to, (resource_id,) if resource_id else ())
    # The plan's monthly limit: a local month holding that many appointments offers nothing.
    limit = db.execute(
        text(
            "SELECT p.max_appointments_per_month FROM subscriptions s JOIN subscription_plans p"
            " ON p.id = s.plan_id WHERE s.tenant_id = :t AND s.status IN ('active', 'trialing', 'past_due')"
            " ORDER BY s.current_period_end DESC LIMIT 1"
        ),
        {"t": service.tenant_id},
    ).scalar()
    if limit is not None and limit >= 0:
        counted: dict[tuple[int, int], int] = {}
        for (start,) in db.execute(
            text(
                "SELECT scheduled_start FROM appointments WHERE tenant_id = :t AND deleted_at IS NULL"
                " AND status NOT IN ('cancelled', 'rescheduled')"
            ),
            {"t": service.tenant_id},
        ):
            month = start.astimezone(zone)
            counted[month.year, month.month] = counted.get((month.year, month.month), 0) + 1

        def open_month(slot: Slot) -> bool:
            month = slot.start.astimezone(zone)
            return counted.get((month.year, month.month), 0) < limit

        slots = [slot for slot in slots if open_month(slot)]
    return slots


# --- random calendars as rows -----------------------------------------------------------------------------

# Local dates of the 2027 clock changes (the date whose midnight offset differs from the next one's).
ANCHORS = {
    "Europe/Madrid": [date(2027, 3, 28), date(2027, 10, 31)],
    "America/New_York": [date(2027, 3, 14), date(2027, 11, 7)],
    "America/Santiago": [date(2027, 4, 3), date(2027, 9, 4)],
    "Australia/Lord_Howe": [date(2027, 4, 4), date(2027, 10, 3)],
}
WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")


def hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def local_at(day: date, minutes: int, zone: ZoneInfo) -> datetime:
    """In UTC: arithmetic on a zoned datetime would step the wall clock, not elapsed time."""
    return datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=zone).astimezone(UTC)


def _saved(db, build) -> bool:
    """Rows that a constraint may refuse (overlapping blocks, double bookings): kept when they pass."""
    try:
        with db.begin_nested():
            build()
            db.flush()
        return True
    except IntegrityError:
        return False


def random_shift(rng: random.Random) -> list[tuple[int, int]]:
    """One day's windows in minutes: a long day (often to 24:00), a night shift's two ends, or anything."""
    kind = rng.random()
    if kind < 0.5:
        return [(rng.randrange(0, 10 * 60, 30), rng.choice([24 * 60, rng.randrange(14 * 60, 24 * 60, 15)]))]
    if kind < 0.8:
        return [(0, rng.randrange(60, 5 * 60, 30)), (rng.randrange(6 * 60, 20 * 60, 30), 24 * 60)]
    start = rng.randrange(0, 23 * 60, 15)
    return [(start, rng.randrange(start + 15, 24 * 60 + 1, 15))]


def build_case(db, rng: random.Random):
    zone_name = rng.choice(sorted(ANCHORS))
    zone = ZoneInfo(zone_name)
    anchor = rng.choice(ANCHORS[zone_name])
    settings = {} if rng.random() < 0.2 else {"slot_step_minutes": rng.choice([10, 15, 20, 30, 60])}
    tenant = f.make_tenant(db, timezone=zone_name, settings=settings)
    hours = rng.choice(
        [
            {},
            {},
            {"start": "00:00", "end": "24:00"},
            {"start": hhmm(rng.randrange(0, 12 * 60, 30)), "end": hhmm(rng.randrange(13 * 60, 24 * 60, 30))},
            {"start": "20:00", "end": "02:00"},
            {"start": "22:00", "end": "24:00"},
        ]
    )
    days = EVERY_DAY if rng.random() < 0.6 else sorted(rng.sample(EVERY_DAY, rng.randint(3, 6)))
    service = f.make_service(
        db,
        tenant,
        duration_minutes=rng.choice([15, 30, 45, 60, 90, 120]),
        buffer_time_minutes=rng.choice([0, 0, 5, 15, 30]),
        available_days=days,
        available_hours=hours,
        min_advance_booking_hours=rng.choice([0, 0, 1, 2, 30]),
        max_advance_booking_days=rng.choice([3, 5, 30, 60, 60]),
    )
    other = f.make_service(db, tenant, duration_minutes=rng.choice([20, 50, 75]), buffer_time_minutes=10)
    client = f.make_client(db, tenant)
    # The business's usual shifts; most resources keep them, so that their hours meet.
    shifts = {day: random_shift(rng) for day in EVERY_DAY}
    resources = []
    for k in range(rng.randint(1, 5)):
        required = k == 0 or rng.random() < 0.2
        capacity = rng.choice([None, None, 1, 2, 3])
        columns = {}
        if k and rng.random() < 0.12:
            columns["is_active"] = False
        elif k and rng.random() < 0.08:
            columns["deleted_at"] = datetime(2027, 1, 1, tzinfo=UTC)
        resource = f.make_resource(db, tenant, "staff", capacity, **columns)
        quantity = rng.choice([1, 1, 1, 2]) if capacity and capacity > 1 else 1
        f.link_service_resource(
            db,
            service,
            resource,
            is_required=required,
            quantity_required=quantity,
            preference_order=rng.randint(0, 2),
        )
        resources.append(resource)
        # Schedules: one or two windows a day, some ending at 24:00, some opening at 00:00 (a night shift).
        for day in EVERY_DAY:
            if rng.random() < 0.08:
                continue
            spans = shifts[day] if rng.random() < 0.7 else random_shift(rng)
            for lo, hi in spans:
                extra = {}
                r = rng.random()
                if r < 0.1:
                    extra["is_active"] = False
                elif r < 0.3:
                    extra["effective_from"] = anchor + timedelta(days=rng.randint(-2, 2))
                elif r < 0.45:
                    extra["effective_until"] = anchor + timedelta(days=rng.randint(-2, 2))
                f.make_schedule(db, resource, day, hhmm(lo), hhmm(hi), **extra)
        # Blocks: one-off ones (across midnight, across the clock change), recurring ones.
        for _ in range(rng.randint(0, 3)):
            day = anchor + timedelta(days=rng.randint(-1, 3))
            start = local_at(day, rng.randrange(0, 24 * 60, 15), zone)
            end = start + timedelta(minutes=rng.choice([15, 30, 60, 90, 180, 600]))
            deleted = {"deleted_at": datetime(2027, 1, 1, tzinfo=UTC)} if rng.random() < 0.2 else {}
            _saved(db, lambda s=start, e=end, d=deleted, r=resource: f.make_block(db, r, s, e, **d))
        for _ in range(rng.randint(0, 2)):
            first_day = anchor - timedelta(days=rng.choice([0, 1, 3, 7, 20, 400]))
            minute = rng.choice(
                [0, 30, 60, 90, 120, 150, 180, 13 * 60, 23 * 60 + 30, rng.randrange(0, 1440, 15)]
            )
            start = local_at(first_day, minute, zone)
            end = start + timedelta(minutes=rng.choice([15, 30, 60, 120]))
            parts = [f"FREQ={rng.choice(['DAILY', 'WEEKLY'])}"]
            if rng.random() < 0.4:
                parts.append(
                    "BYDAY=" + ",".join(sorted(rng.sample(WEEKDAYS, rng.randint(1, 4)), key=WEEKDAYS.index))
                )
            if rng.random() < 0.2:
                parts.append("INTERVAL=2")
            ending = rng.random()
            if ending < 0.25:
                parts.append(f"COUNT={rng.randint(1, 30)}")
            elif ending < 0.5:
                until = local_at(
                    anchor + timedelta(days=rng.randint(-1, 2)), rng.randrange(0, 1440, 30), zone
                )
                parts.append(f"UNTIL={until.astimezone(UTC):%Y%m%dT%H%M%S}Z")
            rule = ";".join(parts)
            if rng.random() < 0.5:
                rule = "RRULE:" + rule
            if rng.random() < 0.4:
                # Exclude one occurrence near the anchor, named in one of the ways RFC 5545 allows.
                excluded = datetime.combine(
                    anchor + timedelta(days=rng.randint(-1, 2)), start.astimezone(zone).time(), tzinfo=zone
                )
                style = rng.choice(["floating", "utc", "tzid"])
                if style == "floating":
                    exdate = f"EXDATE:{excluded:%Y%m%dT%H%M%S}"
                elif style == "utc":
                    exdate = f"EXDATE:{excluded.astimezone(UTC):%Y%m%dT%H%M%S}Z"
                else:
                    exdate = f"EXDATE;TZID={zone_name}:{excluded:%Y%m%dT%H%M%S}"
                if not rule.startswith("RRULE:"):
                    rule = "RRULE:" + rule
                rule += "\n" + exdate
            deleted = {"deleted_at": datetime(2027, 1, 1, tzinfo=UTC)} if rng.random() < 0.15 else {}
            _saved(
                db, lambda s=start, e=end, x=rule, d=deleted, r=resource: f.make_block(db, r, s, e, x, **d)
            )
    # Appointments on the resources: this service's and another's (other lengths and buffers), some cancelled.
    for _ in range(rng.randint(0, 10)):
        day = anchor + timedelta(days=rng.randint(-1, 3))
        start = local_at(day, rng.randrange(0, 24 * 60, 15), zone)
        which = rng.choice([service, other])
        end = start + timedelta(minutes=which.duration_minutes)
        held = rng.sample(resources, rng.randint(1, min(2, len(resources))))
        status = rng.choice(["scheduled", "confirmed", "scheduled", "cancelled", "no_show", "completed"])
        units = rng.choice([1, 1, 2])
        _saved(
            db,
            lambda s=start, e=end, w=which, h=held, st=status, u=units: f.make_appointment(
                db, tenant, w, client, s, e, h, w.buffer_time_minutes, status=st, units=u
            ),
        )
    if rng.random() < 0.35:
        f.make_subscription(
            db, tenant, f.make_plan(db, max_appointments_per_month=rng.choice([0, 1, 2, 4, 6]))
        )
    # In UTC, as the API's clock gives it (aware arithmetic on a zoned datetime would step the wall clock).
    now = local_at(anchor, 0, zone) - timedelta(minutes=rng.choice([30, 60 * 5, 60 * 24, 60 * 47, 60 * 80]))
    date_from = anchor - timedelta(days=rng.randint(0, 1))
    date_to = anchor + timedelta(days=rng.randint(1, 3))
    chosen = None
    candidates = [r for r in resources[1:]]
    if candidates and rng.random() < 0.2:
        chosen = rng.choice(candidates).id
    return tenant, service, now, date_from, date_to, chosen


def dump(db, service) -> str:
    """The case's rows, to minimise a difference by hand."""
    out = []
    for sql in (
        "SELECT duration_minutes, buffer_time_minutes, available_days, available_hours,"
        " min_advance_booking_hours, max_advance_booking_days FROM services WHERE id = :s",
        "SELECT left(r.id::text, 8), sr.is_required, sr.quantity_required, sr.preference_order, r.capacity,"
        " r.is_active, r.deleted_at FROM service_resources sr JOIN resources r ON r.id = sr.resource_id"
        " WHERE sr.service_id = :s",
        "SELECT left(x.resource_id::text, 8), day_of_week, start_time::text, end_time::text, effective_from,"
        " effective_until, x.is_active FROM resource_schedules x JOIN service_resources sr USING (resource_id)"
        " WHERE sr.service_id = :s ORDER BY 1, 2, 3",
        "SELECT left(x.resource_id::text, 8), start_datetime, end_datetime, recurrence_rule, deleted_at"
        " FROM resource_blocks x JOIN service_resources sr USING (resource_id) WHERE sr.service_id = :s",
        "SELECT left(x.resource_id::text, 8), allocated_during, units, active FROM appointment_resources x"
        " JOIN service_resources sr USING (resource_id) WHERE sr.service_id = :s",
    ):
        out += [repr(tuple(row)) for row in db.execute(text(sql), {"s": service.id})]
        out.append("--")
    return "\n".join(out)


def api_slots(tenant, service, date_from, date_to, now, chosen):
    """What GET /v1/availability answers (api/routes/catalog.py): read_window, then plan_window."""
    with UnitOfWork(tenant.id, read_only=True) as uow:
        window = availability.read_window(uow, service.id, date_from, date_to, now, chosen)
    return availability.plan_window(window, now).slots


def outcome(call):
    try:
        return call()
    except (InvalidRequest, SlotUnavailable) as error:
        return error.code


@pytest.mark.parametrize("seed", SEEDS)
def test_find_slots_equals_the_reference_on_random_rows(db, seed):
    rng = random.Random(seed)
    tenant, service, now, date_from, date_to, chosen = build_case(db, rng)
    got = outcome(lambda: api_slots(tenant, service, date_from, date_to, now, chosen))
    want = outcome(lambda: reference_slots(db, service.id, date_from, date_to, now, chosen))
    zone = ZoneInfo(tenant.timezone)

    def show(slots):
        if isinstance(slots, str):
            return slots
        return [(s.start.astimezone(zone).isoformat(), [str(r)[:8] for r in s.resource_ids]) for s in slots]

    if got != want:
        gs = set(got) if not isinstance(got, str) else set()
        ws = set(want) if not isinstance(want, str) else set()
        pytest.fail(
            f"seed {seed} {tenant.timezone} {date_from}..{date_to} now={now.isoformat()}\n"
            f"only find_slots: {show(sorted(gs - ws, key=lambda s: s.start))}\n"
            f"only reference: {show(sorted(ws - gs, key=lambda s: s.start))}\n"
            + (dump(db, service) if os.environ.get("AVAILABILITY_ROWS_DUMP") else "")
        )


@pytest.mark.parametrize("seed", CHECK_SEEDS)
def test_check_slot_and_nearest_alternatives_agree_with_the_reference(db, seed):
    """The booking's check (check_slot: the slot's own date only) and a refusal's alternatives, on the same rows."""
    rng = random.Random(seed)
    tenant, service, now, date_from, date_to, chosen = build_case(db, rng)
    zone = ZoneInfo(tenant.timezone)
    # Neither applies the plan's monthly limit (the booking counts the month itself and passes the full ones).
    db.execute(text("UPDATE subscriptions SET status = 'cancelled' WHERE tenant_id = :t"), {"t": tenant.id})
    db.flush()
    try:
        want = reference_slots(db, service.id, date_from - ONE_DAY, date_to + ONE_DAY, now, chosen)
    except InvalidRequest:
        return
    free = {slot.start: slot for slot in reference_slots(db, service.id, date_from, date_to, now, chosen)}
    step = timedelta(minutes=(tenant.settings or {}).get("slot_step_minutes", 15))
    grid = []
    day = date_from
    while day <= date_to:
        wall = datetime.combine(day, time())
        while wall.date() == day:
            instant = wall.replace(tzinfo=zone).astimezone(UTC)
            if instant.astimezone(zone).replace(tzinfo=None) == wall:
                grid.append(instant)
            wall += step
        day += ONE_DAY
    sample = rng.sample(sorted(free), min(15, len(free))) + rng.sample(grid, min(15, len(grid)))
    ids = [chosen] if chosen else None
    with UnitOfWork(tenant.id) as uow:
        for start in sample:
            got = outcome(lambda s=start: check_slot(uow, service.id, s, now, ids))
            expected = free.get(start)
            if expected is None:
                assert isinstance(got, str), (seed, start.astimezone(zone).isoformat(), got)
            else:
                assert got == expected, (seed, start.astimezone(zone).isoformat(), got, expected)
    # Alternatives around a time in the middle: the nearest reference slots, when they lie well inside the
    # dates the reference covered.
    lo = datetime.combine(date_from - ONE_DAY, time(), tzinfo=zone).astimezone(UTC)
    hi = datetime.combine(date_to + 2 * ONE_DAY, time(), tzinfo=zone).astimezone(UTC)
    asked = rng.choice(grid)
    nearest = sorted(want, key=lambda slot: (abs(slot.start - asked), slot.start))[:3]
    if len(nearest) < 3 or max(abs(slot.start - asked) for slot in nearest) > min(asked - lo, hi - asked):
        return
    with UnitOfWork(tenant.id) as uow:
        got = nearest_alternatives(uow, service.id, asked, now, 3, ids)
    assert got == sorted(nearest, key=lambda slot: slot.start), (seed, asked.astimezone(zone).isoformat())
