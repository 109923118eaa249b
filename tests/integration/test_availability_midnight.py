"""A shift that ends at midnight, on the real database: resource_schedules stores its end as 24:00 (the CHECK
end_time > start_time rules out 00:00), which psycopg cannot load. The calendar reads it as the end of the
day, so its last slot ends at midnight and can be booked. A shift past midnight is two rows, 20:00-24:00 and
00:00-02:00 of the next day; a slot starting before midnight may run on into the second."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, text

from core import booking
from core.availability import Slot, check_slot, find_slots
from core.booking import BookingRequest
from core.clients import ClientDetails
from core.db import UnitOfWork
from core.errors import SlotUnavailable
from core.models import AppointmentResource, Resource, ResourceSchedule
from tests import factories as f

MADRID = ZoneInfo("Europe/Madrid")
MONDAY = date(2027, 3, 1)
NOW = datetime(2027, 2, 20, 9, 0, tzinfo=UTC)
EVERY_DAY = [0, 1, 2, 3, 4, 5, 6]


def at(day: date, clock: str) -> datetime:
    return datetime.combine(day, time.fromisoformat(clock), tzinfo=MADRID).astimezone(UTC)


def midnight_after(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(), tzinfo=MADRID).astimezone(UTC)


def local(slots: list[Slot]) -> list[str]:
    return [slot.start.astimezone(MADRID).strftime("%a %H:%M") for slot in slots]


class Restaurant:
    """Dinner (60 minutes, every day, all day as far as the service goes) at the one table."""

    def __init__(self, db, duration_minutes: int = 60):
        self.db = db
        self.tenant = f.make_tenant(db, settings={"slot_step_minutes": 60})
        self.dinner = f.make_service(
            db,
            self.tenant,
            duration_minutes=duration_minutes,
            available_days=EVERY_DAY,
            available_hours={"start": "00:00", "end": "24:00"},
            min_advance_booking_hours=0,
            max_advance_booking_days=60,
        )
        self.table = f.make_resource(db, self.tenant, "room", name="Table")
        f.link_service_resource(db, self.dinner, self.table)

    def schedule(self, day_of_week: int, start: str, end: str, **columns) -> None:
        f.make_schedule(self.db, self.table, day_of_week, start, end, **columns)

    def book(self, start: datetime, phone: str = "612 345 678") -> booking.BookedAppointment:
        request = BookingRequest(
            service_id=self.dinner.id,
            start=start,
            client=ClientDetails(first_name="Lucía", last_name="Martín", phone=phone),
        )
        with UnitOfWork(self.tenant.id) as uow:
            booked = booking.book(uow, request, NOW)
            uow.commit()
        return booked

    def slots(self, first: date, last: date) -> list[Slot]:
        with UnitOfWork(self.tenant.id) as uow:
            return find_slots(uow, self.dinner.id, first, last, NOW).slots


def test_a_shift_ending_at_24_00_offers_and_books_the_slot_ending_at_midnight(db):
    restaurant = Restaurant(db)
    restaurant.schedule(1, "18:00", "24:00")  # Mondays
    stored = text("SELECT end_time::text FROM resource_schedules WHERE resource_id = :id")
    assert db.execute(stored, {"id": restaurant.table.id}).scalar_one() == "24:00:00"

    slots = restaurant.slots(MONDAY, MONDAY)
    assert local(slots) == [f"Mon {h}:00" for h in range(18, 24)]
    last = slots[-1]
    assert last == Slot(at(MONDAY, "23:00"), midnight_after(MONDAY), (restaurant.table.id,))
    with UnitOfWork(restaurant.tenant.id) as uow:
        assert check_slot(uow, restaurant.dinner, last.start, NOW) == last

    booked = restaurant.book(last.start)
    assert (booked.start, booked.end) == (last.start, midnight_after(MONDAY))
    assert booked.resource_ids == (restaurant.table.id,)
    assert local(restaurant.slots(MONDAY, MONDAY)) == [f"Mon {h}:00" for h in range(18, 23)]


def test_a_shift_past_midnight_is_two_rows_across_the_spring_forward_night(db):
    # A bar open 20:00-02:00 on Saturday night, 2027-03-27: Madrid's clocks jump from 02:00 to 03:00 on Sunday.
    restaurant = Restaurant(db)
    restaurant.schedule(6, "20:00", "24:00")
    restaurant.schedule(0, "00:00", "02:00")
    saturday, sunday = date(2027, 3, 27), date(2027, 3, 28)
    slots = restaurant.slots(saturday, sunday)
    # 01:00 on Sunday would end at 03:00 on the wall clock, after closing.
    assert local(slots) == ["Sat 20:00", "Sat 21:00", "Sat 22:00", "Sat 23:00", "Sun 00:00"]
    assert slots[3].end == midnight_after(saturday) == slots[4].start


def test_a_booking_after_midnight_keeps_off_the_evening_starts_whose_buffer_reaches_it(db):
    # The calendar of the last date is read up to its midnight plus duration plus buffer: a booking starting
    # after midnight + duration still lies in the buffer of the latest evening starts, and rules them out.
    restaurant = Restaurant(db)
    restaurant.tenant.settings = {"slot_step_minutes": 15}
    restaurant.dinner.buffer_time_minutes = 60
    db.flush()
    restaurant.schedule(1, "20:00", "24:00")  # Monday night...
    restaurant.schedule(2, "00:00", "03:00")  # ...into Tuesday
    tuesday = MONDAY + timedelta(days=1)
    restaurant.book(at(tuesday, "01:00"))  # occupies the table 01:00-03:00

    slots = restaurant.slots(MONDAY, MONDAY)
    # 23:00 is occupied until 01:00 (touching); 23:15 would be occupied until 01:15, over the booking.
    assert local(slots)[-1] == "Mon 23:00"
    with UnitOfWork(restaurant.tenant.id) as uow, pytest.raises(SlotUnavailable) as refused:
        check_slot(uow, restaurant.dinner, at(MONDAY, "23:45"), NOW)
    assert refused.value.code == "slot_taken"


FRIDAY, SATURDAY = date(2027, 3, 5), date(2027, 3, 6)


def test_a_slot_past_midnight_is_offered_booked_and_then_taken(db):
    # A bar open 20:00-02:00 on Friday night, with 90-minute tables: 23:00 ends at 00:30 on Saturday.
    bar = Restaurant(db, duration_minutes=90)
    bar.schedule(5, "20:00", "24:00")
    bar.schedule(6, "00:00", "02:00", effective_from=SATURDAY)
    evening = ["Fri 20:00", "Fri 21:00", "Fri 22:00", "Fri 23:00"]
    # Asked for Friday alone, Saturday's row (in effect from that Saturday on) is read too.
    assert local(bar.slots(FRIDAY, FRIDAY)) == evening
    slots = bar.slots(FRIDAY, SATURDAY)
    assert local(slots) == [*evening, "Sat 00:00"]
    late = slots[3]
    assert late == Slot(at(FRIDAY, "23:00"), at(SATURDAY, "00:30"), (bar.table.id,))
    with UnitOfWork(bar.tenant.id) as uow:
        assert check_slot(uow, bar.dinner, late.start, NOW) == late

    booked = bar.book(late.start)
    assert (booked.start, booked.end) == (late.start, at(SATURDAY, "00:30"))
    during = db.execute(
        select(
            func.lower(AppointmentResource.allocated_during), func.upper(AppointmentResource.allocated_during)
        ).where(AppointmentResource.appointment_id == booked.appointment_id)
    ).all()
    assert [tuple(row) for row in during] == [(at(FRIDAY, "23:00"), at(SATURDAY, "00:30"))]
    # Friday 22:00 (until 23:30) and Saturday 00:00 overlap it: no longer offered; the second is refused.
    assert local(bar.slots(FRIDAY, SATURDAY)) == ["Fri 20:00", "Fri 21:00"]
    with pytest.raises(SlotUnavailable) as taken:
        bar.book(at(SATURDAY, "00:00"), phone="612 345 679")
    assert taken.value.code == "slot_taken"


@pytest.mark.parametrize(
    "saturday_row",
    [
        {"is_active": False},
        {"effective_until": FRIDAY},
        {"effective_from": SATURDAY + timedelta(days=7)},
    ],
)
def test_a_next_day_row_not_in_effect_that_night_does_not_continue_the_evening(db, saturday_row):
    bar = Restaurant(db, duration_minutes=90)
    bar.schedule(5, "20:00", "24:00")
    bar.schedule(6, "00:00", "02:00", **saturday_row)
    assert local(bar.slots(FRIDAY, FRIDAY)) == ["Fri 20:00", "Fri 21:00", "Fri 22:00"]
    with UnitOfWork(bar.tenant.id) as uow, pytest.raises(SlotUnavailable) as refused:
        check_slot(uow, bar.dinner, at(FRIDAY, "23:00"), NOW)
    assert refused.value.code == "outside_hours"


def test_a_closing_time_of_24_00_is_00_00_in_python_read_and_written(db):
    restaurant = Restaurant(db)
    restaurant.schedule(1, "18:00", "24:00")
    restaurant.schedule(2, "18:00", "23:00")
    db.expire_all()
    # Loaded through the model and its relationship: psycopg alone cannot read 24:00.
    ends = sorted((row.day_of_week, row.end_time) for row in db.get(Resource, restaurant.table.id).schedules)
    assert ends == [(1, time(0)), (2, time(23))]
    monday = db.scalars(
        select(ResourceSchedule).where(
            ResourceSchedule.resource_id == restaurant.table.id, ResourceSchedule.day_of_week == 1
        )
    ).one()
    monday.end_time = time(22)
    db.flush()
    monday.end_time = time(0)
    db.flush()
    stored = text(
        "SELECT day_of_week, end_time::text FROM resource_schedules WHERE resource_id = :id ORDER BY 1"
    )
    assert db.execute(stored, {"id": restaurant.table.id}).all() == [(1, "24:00:00"), (2, "23:00:00")]
