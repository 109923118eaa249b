"""The time rules of DESIGN §4 for businesses in unusual zones: half-hour and 45-minute offsets and clock changes
(Lord_Howe, Chatham, St_Johns, Kathmandu), the ends of the clock (Kiritimati +14, Pago_Pago -11), a negative DST
(Dublin), a day that starts at 01:00 (Santiago) and Ramadan's changes (Casablanca), all in 2027. A review found
them all held (2026-11-28); these keep them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time

from api.app import create_app
from core import booking
from core.availability import find_slots
from core.booking import BookingRequest
from core.clients import ClientDetails
from core.db import UnitOfWork
from core.errors import Conflict, LimitReached
from tests import factories
from tests.scenarios import build_salon

NOW = datetime(2027, 1, 10, tzinfo=UTC)


def book(salon, start: datetime, phone: str, now: datetime = NOW) -> booking.BookedAppointment:
    with UnitOfWork(salon.tenant.id) as uow:
        booked = booking.book(
            uow, BookingRequest(salon.haircut.id, start, ClientDetails("Ana", phone=phone)), now
        )
        uow.commit()
    return booked


def slots(salon, first: date, last: date, now: datetime = NOW) -> list:
    with UnitOfWork(salon.tenant.id) as uow:
        return find_slots(uow, salon.haircut.id, first, last, now).slots


@pytest.mark.parametrize(
    "zone", ["Pacific/Kiritimati", "Pacific/Pago_Pago", "Pacific/Chatham", "Asia/Kathmandu"]
)
def test_the_plans_month_is_the_businesss_calendar_month(db, zone):
    # At 00:30 on 1 March in Kiritimati it is still February in UTC; at 23:00 on 28 February in Pago_Pago it is
    # already March.
    salon = build_salon(
        db, timezone=zone, opens="00:00", closes="23:45", duration_minutes=30, max_advance_booking_days=200
    )
    plan = factories.make_plan(db, max_appointments_per_month=1)
    factories.make_subscription(db, salon.tenant, plan, status="active")
    first_of_march = date(2027, 3, 1)
    book(salon, salon.at(first_of_march, "00:30"), "612345001")
    book(salon, salon.at(first_of_march - timedelta(days=1), "23:00"), "612345002")  # February's
    with UnitOfWork(salon.tenant.id) as uow, pytest.raises(LimitReached):
        request = BookingRequest(
            salon.haircut.id, salon.at(date(2027, 3, 4), "10:00"), ClientDetails("Bea", phone="612345003")
        )
        booking.book(uow, request, NOW)
    assert slots(salon, first_of_march, date(2027, 3, 2)) == []
    assert slots(salon, date(2027, 4, 1), date(2027, 4, 1)) != []


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        ("Australia/Lord_Howe", date(2027, 10, 3)),  # 02:00 -> 02:30
        ("Australia/Lord_Howe", date(2027, 4, 4)),  # 01:30-02:00 twice
        ("Pacific/Chatham", date(2027, 9, 26)),
        ("Pacific/Chatham", date(2027, 4, 4)),
        ("America/St_Johns", date(2027, 3, 14)),
        ("America/St_Johns", date(2027, 11, 7)),
        ("Europe/Dublin", date(2027, 10, 31)),
        ("Europe/Dublin", date(2027, 3, 28)),
        ("America/Santiago", date(2027, 9, 5)),  # the day starts at 01:00
        ("Africa/Casablanca", date(2027, 2, 7)),
        ("Africa/Casablanca", date(2027, 3, 14)),
    ],
)
def test_no_slot_in_a_gap_and_a_repeated_time_once_at_its_first_occurrence(db, zone, day):
    salon = build_salon(
        db, timezone=zone, opens="00:00", closes="04:30", duration_minutes=30, max_advance_booking_days=365
    )
    found = slots(salon, day, day)
    assert found
    walls = [slot.start.astimezone(salon.zone).replace(tzinfo=None) for slot in found]
    assert len(walls) == len(set(walls))
    for slot, wall in zip(found, walls, strict=True):
        # A time in a gap does not survive the round trip; a repeated one is its first occurrence (fold 0).
        assert wall.replace(tzinfo=salon.zone, fold=0).astimezone(UTC) == slot.start
        assert wall.date() == day


def test_the_minimum_notice_is_elapsed_time_across_a_half_hour_clock_change(db):
    salon = build_salon(
        db,
        timezone="Australia/Lord_Howe",
        opens="00:00",
        closes="06:00",
        duration_minutes=15,
        min_advance_booking_hours=2,
    )
    now = datetime(2027, 10, 2, 14, 0, tzinfo=UTC)  # 00:30 at +10:30; at 02:00 the clock goes to 02:30 (+11)
    found = slots(salon, date(2027, 10, 3), date(2027, 10, 3), now)
    assert found[0].start == now + timedelta(hours=2)


def test_the_cancellation_window_is_elapsed_time_across_a_45_minute_offsets_change(db):
    salon = build_salon(
        db, timezone="Pacific/Chatham", opens="00:00", closes="23:45", cancellation_policy_hours=24
    )
    appointment = book(
        salon, salon.at(date(2027, 9, 26), "10:00"), "612345004", datetime(2027, 9, 1, tzinfo=UTC)
    )
    # Chatham's clock goes forward an hour that night: 10:00 the day before is 23 hours earlier, 09:00 is 24.
    with UnitOfWork(salon.tenant.id) as uow, pytest.raises(Conflict) as refused:
        booking.cancel(uow, appointment.appointment_id, None, salon.at(date(2027, 9, 25), "10:00"))
    assert refused.value.code == "cancel_window_passed"
    with UnitOfWork(salon.tenant.id) as uow:
        booking.cancel(uow, appointment.appointment_id, None, salon.at(date(2027, 9, 25), "09:00"))


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        ("America/St_Johns", date(2027, 3, 14)),  # -03:30, then -02:30
        ("Asia/Kathmandu", date(2027, 3, 1)),  # +05:45
        ("Pacific/Chatham", date(2027, 9, 26)),  # +12:45, then +13:45
        ("Europe/Dublin", date(2027, 3, 28)),  # +00:00, then +01:00
        ("America/Santiago", date(2027, 9, 5)),
        ("Pacific/Pago_Pago", date(2027, 9, 5)),  # -11:00
    ],
)
def test_the_apis_slots_carry_the_offset_of_their_instant_on_the_day_asked(db, redis_prefix, zone, day):
    salon = build_salon(
        db, timezone=zone, opens="00:00", closes="06:00", duration_minutes=60, with_api_key=True
    )
    headers = {"Authorization": f"Bearer {salon.api_key}"}
    with (
        freeze_time(day - timedelta(days=10), real_asyncio=True),
        TestClient(create_app(), headers=headers) as client,
    ):
        answer = client.get(
            "/v1/availability", params={"service_id": str(salon.haircut.id), "from": str(day), "to": str(day)}
        )
    assert answer.status_code == 200, answer.text
    starts = [datetime.fromisoformat(slot["start"]) for slot in answer.json()["slots"]]
    assert starts
    for start in starts:
        assert start.utcoffset() == start.astimezone(ZoneInfo(zone)).utcoffset()
        assert start.astimezone(ZoneInfo(zone)).date() == day
