"""The availability loader on real rows: what it reads (active allocations, live blocks, schedules in effect,
active resources of the tenant) and the errors of the public functions."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from core.availability import (
    Slot,
    _context,
    _load,
    check_slot,
    find_slots,
    nearest_alternatives,
)
from core.db import UnitOfWork
from core.errors import InvalidRequest, NotFound, SlotUnavailable, TenantNotAllowed
from tests import factories as f

MADRID = ZoneInfo("Europe/Madrid")
MONDAY = date(2027, 3, 1)
NOW = datetime(2027, 2, 20, 9, 0, tzinfo=UTC)
WEEKDAYS = (1, 2, 3, 4, 5)


def at(day: date, clock: str) -> datetime:
    hour, minute = (int(part) for part in clock.split(":"))
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=MADRID).astimezone(UTC)


def local(slots: list[Slot]) -> list[str]:
    return [slot.start.astimezone(MADRID).strftime("%H:%M") for slot in slots]


class Salon:
    """A haircut needs the chair and one of two stylists (Ana preferred); all work Mon-Fri 09:00-18:00."""

    def __init__(self, db):
        self.tenant = f.make_tenant(db, settings={"slot_step_minutes": 60})
        self.haircut = f.make_service(db, self.tenant, duration_minutes=60, buffer_time_minutes=0)
        self.chair = f.make_resource(db, self.tenant, "equipment", name="Chair")
        self.ana = f.make_resource(db, self.tenant, name="Ana")
        self.bea = f.make_resource(db, self.tenant, name="Bea")
        f.link_service_resource(db, self.haircut, self.chair)
        f.link_service_resource(db, self.haircut, self.ana, is_required=False, preference_order=1)
        f.link_service_resource(db, self.haircut, self.bea, is_required=False, preference_order=2)
        for resource in (self.chair, self.ana, self.bea):
            for day in WEEKDAYS:
                f.make_schedule(db, resource, day, "09:00", "18:00")
        self.client = f.make_client(db, self.tenant)

    def uow(self):
        return UnitOfWork(self.tenant.id)

    def slots(self, day=MONDAY, **kwargs) -> list[Slot]:
        with self.uow() as uow:
            return find_slots(uow, self.haircut.id, day, day, NOW, **kwargs).slots


@pytest.fixture
def salon(db):
    return Salon(db)


def test_find_slots_reads_active_allocations_live_blocks_and_the_recurring_lunch(db, salon):
    f.make_appointment(
        db, salon.tenant, salon.haircut, salon.client, at(MONDAY, "10:00"), resources=[salon.ana, salon.chair]
    )
    # Cancelled: its allocation is inactive and frees the time.
    f.make_appointment(
        db,
        salon.tenant,
        salon.haircut,
        salon.client,
        at(MONDAY, "12:00"),
        resources=[salon.ana, salon.chair],
        status="cancelled",
    )
    f.make_block(db, salon.chair, at(MONDAY, "15:00"), at(MONDAY, "16:00"), block_type="maintenance")
    f.make_block(db, salon.chair, at(MONDAY, "16:00"), at(MONDAY, "17:00"), deleted_at=NOW)
    # Ana lunches every Monday 11:00-12:00 since a week before (first occurrence in the past).
    f.make_block(
        db,
        salon.ana,
        at(MONDAY - timedelta(days=7), "11:00"),
        at(MONDAY - timedelta(days=7), "12:00"),
        "FREQ=WEEKLY;BYDAY=MO",
        block_type="break",
    )

    with salon.uow() as uow:
        found = find_slots(uow, salon.haircut.id, MONDAY, MONDAY, NOW)
    assert found.timezone == "Europe/Madrid" and found.service_id == salon.haircut.id
    served = {start: slot.resource_ids for start, slot in zip(local(found.slots), found.slots, strict=True)}
    ana, bea = (tuple(sorted((r.id, salon.chair.id))) for r in (salon.ana, salon.bea))
    assert served == {
        "09:00": ana,
        "11:00": bea,  # Ana's lunch
        "12:00": ana,  # the cancelled appointment does not count
        "13:00": ana,
        "14:00": ana,
        "16:00": ana,  # the deleted block does not count
        "17:00": ana,
    }  # 10:00 the chair is taken, 15:00 it is blocked
    assert found.slots[0] == Slot(at(MONDAY, "09:00"), at(MONDAY, "10:00"), ana)


def test_find_slots_for_a_chosen_stylist(db, salon):
    f.make_appointment(
        db, salon.tenant, salon.haircut, salon.client, at(MONDAY, "09:00"), resources=[salon.bea]
    )
    assert local(salon.slots(resource_id=salon.bea.id)) == [
        "10:00",
        "11:00",
        "12:00",
        "13:00",
        "14:00",
        "15:00",
        "16:00",
        "17:00",
    ]
    assert all(salon.bea.id in slot.resource_ids for slot in salon.slots(resource_id=salon.bea.id))
    other = f.make_resource(db, salon.tenant)
    with pytest.raises(InvalidRequest) as raised, salon.uow() as uow:
        find_slots(uow, salon.haircut.id, MONDAY, MONDAY, NOW, resource_id=other.id)
    assert raised.value.code == "resource_not_eligible"


def test_schedules_in_effect_and_active_only(db, salon):
    tuesday = MONDAY + timedelta(days=1)
    f.make_schedule(db, salon.chair, 6, "09:00", "12:00", is_active=False)  # Saturday, switched off
    f.make_schedule(db, salon.ana, 6, "09:00", "12:00")
    for resource in (salon.chair, salon.ana):
        f.make_schedule(
            db, resource, 0, "10:00", "12:00", effective_until=MONDAY - timedelta(days=1)
        )  # Sundays, expired
    salon.haircut.available_days = [0, 1, 2, 3, 4, 5, 6]
    db.flush()
    assert salon.slots(MONDAY + timedelta(days=5)) == []  # Saturday: the chair's schedule is switched off
    # effective_until is inclusive: Sunday Feb 28 is the Sunday schedule's last day.
    assert local(salon.slots(MONDAY - timedelta(days=8))) == ["10:00", "11:00"]  # Sunday Feb 21
    assert local(salon.slots(MONDAY - timedelta(days=1))) == ["10:00", "11:00"]  # Sunday Feb 28
    assert salon.slots(MONDAY + timedelta(days=6)) == []  # Sunday Mar 7: no longer in effect
    assert len(salon.slots(tuesday)) == 9


def test_an_inactive_required_resource_means_no_slots_and_inactive_candidates_are_ignored(db, salon):
    salon.ana.is_active = False
    db.flush()
    assert {slot.resource_ids for slot in salon.slots()} == {tuple(sorted((salon.bea.id, salon.chair.id)))}
    salon.chair.deleted_at = NOW
    db.flush()
    assert salon.slots() == []
    with salon.uow() as uow, pytest.raises(SlotUnavailable) as raised:
        check_slot(uow, salon.haircut, at(MONDAY, "09:00"), NOW)
    assert raised.value.code == "outside_hours"


def test_a_service_without_resources_offers_nothing(db, salon):
    bare = f.make_service(db, salon.tenant, duration_minutes=30)
    with salon.uow() as uow:
        assert find_slots(uow, bare.id, MONDAY, MONDAY, NOW).slots == []


def test_shared_capacity_counts_units_from_the_table(db, salon):
    room = f.make_resource(db, salon.tenant, "room", capacity=3)
    yoga = f.make_service(db, salon.tenant, duration_minutes=60)
    f.link_service_resource(db, yoga, room, quantity_required=2)
    for day in WEEKDAYS:
        f.make_schedule(db, room, day, "09:00", "12:00")
    f.make_appointment(db, salon.tenant, yoga, salon.client, at(MONDAY, "10:00"), resources=[room], units=2)
    f.make_appointment(db, salon.tenant, yoga, salon.client, at(MONDAY, "11:00"), resources=[room], units=1)
    with salon.uow() as uow:
        assert local(find_slots(uow, yoga.id, MONDAY, MONDAY, NOW).slots) == ["09:00", "11:00"]


def test_check_slot_on_real_rows(db, salon):
    f.make_appointment(
        db, salon.tenant, salon.haircut, salon.client, at(MONDAY, "10:00"), resources=[salon.ana, salon.chair]
    )
    stranger = f.make_resource(db, salon.tenant)
    with salon.uow() as uow:
        slot = check_slot(uow, salon.haircut, at(MONDAY, "09:00"), NOW)
        assert slot == Slot(
            at(MONDAY, "09:00"), at(MONDAY, "10:00"), tuple(sorted((salon.ana.id, salon.chair.id)))
        )
        assert check_slot(
            uow, salon.haircut.id, at(MONDAY, "09:00"), NOW, [salon.bea.id]
        ).resource_ids == tuple(sorted((salon.bea.id, salon.chair.id)))
        cases = [
            (at(MONDAY, "10:00"), NOW, None, "slot_taken"),
            (at(MONDAY, "09:30"), NOW, None, "off_grid"),
            (at(MONDAY, "18:00"), NOW, None, "outside_hours"),
            (at(MONDAY, "09:00"), at(MONDAY, "08:30"), None, "too_soon"),
            (at(MONDAY, "09:00"), at(MONDAY, "09:00") - timedelta(days=31), None, "too_far"),
            (at(MONDAY, "09:00"), NOW, [stranger.id], "resource_not_eligible"),
        ]
        for start, now, resource_ids, code in cases:
            with pytest.raises((SlotUnavailable, InvalidRequest)) as raised:
                check_slot(uow, salon.haircut, start, now, resource_ids)
            assert raised.value.code == code, (start, code)
    # It reads the current rows: a booking made after the first check is seen by the next one.
    with salon.uow() as uow:
        check_slot(uow, salon.haircut, at(MONDAY, "11:00"), NOW)
        f.make_appointment(
            db,
            salon.tenant,
            salon.haircut,
            salon.client,
            at(MONDAY, "11:00"),
            resources=[salon.ana, salon.bea, salon.chair],
        )
        with pytest.raises(SlotUnavailable):
            check_slot(uow, salon.haircut, at(MONDAY, "11:00"), NOW)


def test_nearest_alternatives_search_outward(db, salon):
    # The whole of Monday is taken on the chair except 17:00; Tuesday is free.
    f.make_block(db, salon.chair, at(MONDAY, "09:00"), at(MONDAY, "17:00"))
    with salon.uow() as uow:
        near = nearest_alternatives(uow, salon.haircut, at(MONDAY, "12:00"), NOW, 3)
        assert [slot.start for slot in near] == [
            at(MONDAY, "17:00"),
            at(MONDAY + timedelta(days=1), "09:00"),
            at(MONDAY + timedelta(days=1), "10:00"),
        ]
        # Never before what may be booked: "now" at Monday 16:30 with one hour's notice leaves Tuesday.
        late = nearest_alternatives(uow, salon.haircut, at(MONDAY, "12:00"), at(MONDAY, "16:30"), 2)
        assert [slot.start for slot in late] == [
            at(MONDAY + timedelta(days=1), "09:00"),
            at(MONDAY + timedelta(days=1), "10:00"),
        ]
        # A week of blocks: the search keeps widening.
        f.make_block(
            db, salon.chair, at(MONDAY + timedelta(days=1), "00:00"), at(MONDAY + timedelta(days=9), "00:00")
        )
        far = nearest_alternatives(uow, salon.haircut, at(MONDAY, "12:00"), at(MONDAY, "16:30"), 1)
        assert [slot.start for slot in far] == [at(MONDAY + timedelta(days=9), "09:00")]
        # But not beyond a month of the time asked for (the salon takes bookings a year ahead).
        salon.haircut.max_advance_booking_days = 365
        f.make_block(
            db, salon.chair, at(MONDAY + timedelta(days=9), "00:00"), at(MONDAY + timedelta(days=32), "00:00")
        )
        db.flush()
        assert nearest_alternatives(uow, salon.haircut, at(MONDAY, "12:00"), at(MONDAY, "16:30"), 1) == []
        assert [
            slot.start
            for slot in nearest_alternatives(
                uow, salon.haircut, at(MONDAY + timedelta(days=2), "12:00"), at(MONDAY, "16:30"), 1
            )
        ] == [at(MONDAY + timedelta(days=32), "09:00")]


def test_a_time_beyond_the_booking_horizon_is_offered_the_last_slots_before_it(db, salon):
    # Asked for two months past a 30-day horizon: the nearest free slots are the horizon's last ones. The search
    # stopped a month from the time asked for and offered nothing (found in review).
    salon.haircut.max_advance_booking_days = 30
    db.flush()
    last_week = (NOW + timedelta(days=23)).date(), (NOW + timedelta(days=30)).date()
    with salon.uow() as uow:
        near = nearest_alternatives(uow, salon.haircut, NOW + timedelta(days=90), NOW, 3)
        bookable = find_slots(uow, salon.haircut.id, *last_week, NOW).slots
    assert len(near) == 3
    assert near == bookable[-3:]


def test_the_tenant_slot_step_and_time_zone_are_used(db):
    tenant = f.make_tenant(db, timezone="America/New_York")  # no slot_step_minutes: the default 15
    service = f.make_service(
        db, tenant, duration_minutes=30, available_hours={"start": "09:00", "end": "10:00"}
    )
    resource = f.make_resource(db, tenant)
    f.link_service_resource(db, service, resource)
    f.make_schedule(db, resource, 1, "09:00", "18:00")
    with UnitOfWork(tenant.id) as uow:
        found = find_slots(uow, service.id, MONDAY, MONDAY, NOW)
    assert found.timezone == "America/New_York"
    assert [slot.start for slot in found.slots] == [
        datetime(2027, 3, 1, 14, m, tzinfo=UTC) for m in (0, 15, 30)
    ]


def test_unknown_deleted_or_foreign_services_are_not_found_and_inactive_ones_not_bookable(db, salon):
    other_tenant = f.make_tenant(db)
    foreign = f.make_service(db, other_tenant)
    inactive = f.make_service(db, salon.tenant, is_active=False)
    deleted = f.make_service(db, salon.tenant, deleted_at=NOW)
    for service in (inactive.id, inactive):
        with salon.uow() as uow, pytest.raises(InvalidRequest) as raised:
            find_slots(uow, service, MONDAY, MONDAY, NOW)
        assert raised.value.code == "service_inactive"
    for service_id in (foreign.id, deleted.id, uuid.uuid4()):
        with salon.uow() as uow, pytest.raises(NotFound) as raised:
            find_slots(uow, service_id, MONDAY, MONDAY, NOW)
        assert raised.value.code == "service_not_found"
        with salon.uow() as uow, pytest.raises(NotFound):
            check_slot(uow, service_id, at(MONDAY, "09:00"), NOW)
    with salon.uow() as uow, pytest.raises(NotFound):
        check_slot(uow, foreign, at(MONDAY, "09:00"), NOW)  # a row object of another tenant too


def test_range_errors(salon):
    with salon.uow() as uow:
        with pytest.raises(InvalidRequest) as raised:
            find_slots(uow, salon.haircut.id, MONDAY, MONDAY - timedelta(days=1), NOW)
        assert raised.value.code == "invalid_range"
        assert len(find_slots(uow, salon.haircut.id, MONDAY, MONDAY + timedelta(days=61), NOW).slots) > 0
        with pytest.raises(InvalidRequest) as raised:
            find_slots(uow, salon.haircut.id, MONDAY, MONDAY + timedelta(days=62), NOW)
        assert raised.value.code == "range_too_long"


def test_a_chosen_stylist_is_planned_without_reading_the_other_stylists_calendars(db, salon):
    # Bea is busy at 10:00 (elsewhere: the chair stays free).
    f.make_appointment(
        db, salon.tenant, salon.haircut, salon.client, at(MONDAY, "10:00"), resources=[salon.bea]
    )
    with salon.uow() as uow:
        context = _context(uow, salon.haircut.id)
        chosen = _load(uow, context, MONDAY, MONDAY, (salon.bea.id,))
        everyone = _load(uow, context, MONDAY, MONDAY)
        chair_only = _load(uow, context, MONDAY, MONDAY, (salon.chair.id,))

    def with_hours(calendar):
        return {resource.resource_id for resource in calendar.resources if resource.windows}

    assert with_hours(chosen) == {salon.bea.id, salon.chair.id}
    # The chair is needed by every appointment, not one of the interchangeable: choosing it keeps them all.
    assert with_hours(everyone) == with_hours(chair_only) == {salon.ana.id, salon.bea.id, salon.chair.id}
    # What the choice gives: Bea's own slots, her 10:00 taken; the others see Ana serve 10:00.
    assert "10:00" not in local(salon.slots(resource_id=salon.bea.id))
    assert {slot.resource_ids for slot in salon.slots(resource_id=salon.bea.id)} == {
        tuple(sorted((salon.bea.id, salon.chair.id)))
    }
    assert "10:00" in local(salon.slots(resource_id=salon.chair.id))
    with salon.uow() as uow, pytest.raises(InvalidRequest) as refused:
        find_slots(uow, salon.haircut.id, MONDAY, MONDAY, NOW, resource_id=uuid.uuid4())
    # Named as the query names it.
    assert (refused.value.code, refused.value.details["field"]) == ("resource_not_eligible", "resource_id")


@pytest.mark.parametrize("status", ["suspended", "cancelled"])
def test_a_business_that_cannot_book_offers_no_slots(db, salon, status):
    salon.tenant.subscription_status = status
    db.flush()
    with salon.uow() as uow, pytest.raises(TenantNotAllowed) as refused:
        find_slots(uow, salon.haircut.id, MONDAY, MONDAY, NOW)
    assert refused.value.code == "tenant_inactive"


def test_a_month_the_plan_has_filled_offers_no_slots(db, salon):
    # Two a month, and February 2027 holds two (a cancelled one does not count): March is still open.
    f.make_subscription(db, salon.tenant, f.make_plan(db, max_appointments_per_month=2), status="active")
    friday = MONDAY - timedelta(days=3)
    for clock in ("09:00", "11:00"):
        f.make_appointment(
            db, salon.tenant, salon.haircut, salon.client, at(friday, clock), resources=[salon.ana]
        )
    f.make_appointment(
        db,
        salon.tenant,
        salon.haircut,
        salon.client,
        at(friday, "13:00"),
        resources=[salon.ana],
        status="cancelled",
    )
    with salon.uow() as uow:
        found = find_slots(uow, salon.haircut.id, friday - timedelta(days=1), MONDAY, NOW).slots
    assert {slot.start.astimezone(MADRID).date() for slot in found} == {MONDAY}
    # One of February's two cancelled: the month has room again.
    with salon.uow() as uow:
        uow.session.execute(
            text(
                "UPDATE appointments SET status = 'cancelled' WHERE tenant_id = :t AND scheduled_start = :s"
            ),
            {"t": salon.tenant.id, "s": at(friday, "09:00")},
        )
        february = find_slots(uow, salon.haircut.id, friday, friday, NOW).slots
    assert "09:00" in local(february)


def test_a_full_month_is_counted_on_the_businesss_own_clock_whatever_postgresql_calls_its_zone(db):
    # "CET" is an IANA zone with summer time; PostgreSQL's timezone('CET', ...) reads it as the fixed +01
    # abbreviation, so an appointment at 00:30 on 1 April (summer time) fell in its March.
    cet = ZoneInfo("CET")
    tenant = f.make_tenant(db, timezone="CET", settings={"slot_step_minutes": 60})
    service = f.make_service(
        db, tenant, duration_minutes=60, available_days=list(range(7)), max_advance_booking_days=90
    )
    stylist = f.make_resource(db, tenant, name="Ana")
    f.link_service_resource(db, service, stylist)
    for day in range(7):
        f.make_schedule(db, stylist, day, "09:00", "18:00")
    f.make_subscription(db, tenant, f.make_plan(db, max_appointments_per_month=1), status="active")
    f.make_appointment(
        db,
        tenant,
        service,
        f.make_client(db, tenant),
        datetime(2027, 4, 1, 0, 30, tzinfo=cet),
        resources=[stylist],
    )
    with UnitOfWork(tenant.id) as uow:
        found = find_slots(uow, service.id, date(2027, 3, 30), date(2027, 4, 2), NOW).slots
    assert {slot.start.astimezone(cet).month for slot in found} == {3}


def test_a_block_ending_by_a_utc_until_in_the_repeated_autumn_hour_blocks_that_nights_first_0130(db):
    # New York, 7 November 2027: 01:00-02:00 comes twice. UNTIL=06:00Z (the second 01:00) is after the
    # night's 01:30 occurrence (05:30Z); read on the naive wall clock it cut that occurrence, and a booking
    # was taken during the time off (found in review).
    tenant = f.make_tenant(db, timezone="America/New_York", settings={"slot_step_minutes": 30})
    service = f.make_service(
        db,
        tenant,
        duration_minutes=30,
        available_days=range(7),
        available_hours={},
        min_advance_booking_hours=0,
    )
    stylist = f.make_resource(db, tenant)
    f.link_service_resource(db, service, stylist)
    for day in range(7):
        f.make_schedule(db, stylist, day, "00:00", "24:00")
    first = datetime(2027, 11, 5, 1, 30, tzinfo=ZoneInfo("America/New_York"))
    f.make_block(db, stylist, first, first + timedelta(minutes=30), "FREQ=DAILY;UNTIL=20271107T060000Z")
    now, sunday, first_0130 = (
        datetime(2027, 11, 1, tzinfo=UTC),
        date(2027, 11, 7),
        datetime(2027, 11, 7, 5, 30, tzinfo=UTC),
    )
    with UnitOfWork(tenant.id) as uow:
        offered = {slot.start for slot in find_slots(uow, service.id, sunday, sunday, now).slots}
    assert first_0130 - timedelta(minutes=30) in offered
    assert first_0130 not in offered
    with UnitOfWork(tenant.id) as uow, pytest.raises(SlotUnavailable):
        check_slot(uow, service, first_0130, now)
