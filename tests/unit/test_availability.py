"""The pure availability layer on fixed data: no database.

Dates: 2027-03-01 is a Monday. Europe/Madrid springs forward on 2027-03-28 (02:00 -> 03:00) and falls back
on 2027-10-31 (03:00 -> 02:00); America/New_York on 2027-03-14 (02:00 -> 03:00) and 2027-11-07 (02:00 -> 01:00);
America/Santiago springs forward at the end of Saturday 2027-09-04 (24:00 -> Sunday 01:00).
"""

from __future__ import annotations

import random
import threading
import uuid
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import rrulestr

from core.availability import (
    ResourceCalendar,
    ResourceNeed,
    ServiceCalendar,
    ServiceRules,
    Slot,
    WorkingWindow,
    _rrule_parts,
    _skip_ahead,
    compute_slots,
    day_number,
    evaluate_slot,
    expand_block,
    nearest_slots,
)
from core.errors import InvalidRequest, SlotUnavailable

MADRID = "Europe/Madrid"
NEW_YORK = "America/New_York"
SANTIAGO = "America/Santiago"
SERVICE = uuid.UUID(int=100)
STYLIST = uuid.UUID(int=1)
STYLIST_2 = uuid.UUID(int=2)
CHAIR = uuid.UUID(int=3)
ROOM = uuid.UUID(int=4)
ALL_DAYS = (0, 1, 2, 3, 4, 5, 6)
MONDAY = date(2027, 3, 1)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def at(tz: str, y: int, mo: int, d: int, h: int, mi: int = 0, fold: int = 0) -> datetime:
    """A local wall-clock time as an aware UTC datetime."""
    return datetime(y, mo, d, h, mi, fold=fold, tzinfo=ZoneInfo(tz)).astimezone(UTC)


def windows(start: str, end: str, days=ALL_DAYS, **effective) -> tuple[WorkingWindow, ...]:
    # An end of "24:00" comes as the loader hands it over: 00:00 (see WorkingWindow).
    closing = time() if end == "24:00" else time.fromisoformat(end)
    return tuple(WorkingWindow(day, time.fromisoformat(start), closing, **effective) for day in days)


def rules(**overrides) -> ServiceRules:
    values = {
        "duration_minutes": 60,
        "buffer_time_minutes": 0,
        "available_days": ALL_DAYS,
        "available_hours": {"start": "09:00", "end": "18:00"},
        "min_advance_booking_hours": 0,
        "max_advance_booking_days": None,
        "slot_step_minutes": 15,
    }
    values.update(overrides)
    return ServiceRules(**values)


def calendar(resources, needs=None, tz=MADRID, **rule_overrides) -> ServiceCalendar:
    if needs is None:
        needs = tuple(ResourceNeed(r.resource_id) for r in resources)
    return ServiceCalendar(SERVICE, tz, rules(**rule_overrides), tuple(needs), tuple(resources))


def local_starts(slots: list[Slot], tz: str = MADRID) -> list[str]:
    zone = ZoneInfo(tz)
    return [slot.start.astimezone(zone).strftime("%H:%M") for slot in slots]


def slots_on(cal: ServiceCalendar, day: date, now: datetime = LONG_AGO, **kwargs) -> list[Slot]:
    return compute_slots(cal, now, day, day, **kwargs)


def reason(cal: ServiceCalendar, start: datetime, now: datetime = LONG_AGO, **kwargs) -> str:
    with pytest.raises((SlotUnavailable, InvalidRequest)) as raised:
        evaluate_slot(cal, start, now, **kwargs)
    return raised.value.code


# --- the grid, the service's own rules, boundaries ------------------------------------------------------


def test_a_plain_day_offers_every_step_that_fits_before_closing():
    cal = calendar([ResourceCalendar(STYLIST, windows=windows("09:00", "18:00"))])
    slots = slots_on(cal, MONDAY)
    starts = local_starts(slots)
    assert starts[0] == "09:00" and starts[-1] == "17:00"
    assert len(starts) == 33  # 09:00, 09:15 ... 17:00
    first = slots[0]
    assert first.start == datetime(2027, 3, 1, 8, 0, tzinfo=UTC)  # CET is UTC+1
    assert first.end - first.start == timedelta(minutes=60)
    assert first.resource_ids == (STYLIST,)


def test_a_slot_ending_exactly_at_closing_is_offered_one_minute_past_is_not():
    stylist = ResourceCalendar(STYLIST, windows=windows("09:00", "10:00"))
    assert local_starts(slots_on(calendar([stylist], duration_minutes=60), MONDAY)) == ["09:00"]
    assert slots_on(calendar([stylist], duration_minutes=61), MONDAY) == []
    # The service's own closing time counts the same way.
    wide = ResourceCalendar(STYLIST, windows=windows("00:00", "23:00"))
    cal = calendar([wide], available_hours={"start": "09:00", "end": "10:00"})
    assert local_starts(slots_on(cal, MONDAY)) == ["09:00"]
    assert slots_on(calendar([wide], available_hours={"start": "09:00", "end": "09:59"}), MONDAY) == []


def test_the_service_days_and_hours_restrict_the_resource_hours():
    stylist = ResourceCalendar(STYLIST, windows=windows("08:00", "20:00"))
    cal = calendar([stylist], available_days=(1, 3), available_hours={"start": "10:00", "end": "12:00"})
    week = compute_slots(cal, LONG_AGO, MONDAY, MONDAY + timedelta(days=6))
    days = {slot.start.astimezone(ZoneInfo(MADRID)).date() for slot in week}
    assert days == {date(2027, 3, 1), date(2027, 3, 3)}  # Monday and Wednesday only
    assert local_starts(slots_on(cal, MONDAY)) == ["10:00", "10:15", "10:30", "10:45", "11:00"]


def test_the_grid_is_anchored_at_local_midnight():
    stylist = ResourceCalendar(STYLIST, windows=windows("09:10", "12:00"))
    cal = calendar([stylist], slot_step_minutes=30, available_hours=None)
    assert local_starts(slots_on(cal, MONDAY)) == ["09:30", "10:00", "10:30", "11:00"]


def test_touching_working_windows_make_one_shift_and_a_gap_splits_them():
    stylist = ResourceCalendar(STYLIST, windows=windows("09:00", "13:00") + windows("13:00", "15:00"))
    assert "12:30" in local_starts(slots_on(calendar([stylist]), MONDAY))
    split = ResourceCalendar(STYLIST, windows=windows("09:00", "13:00") + windows("14:00", "18:00"))
    starts = local_starts(slots_on(calendar([split]), MONDAY))
    assert "12:00" in starts and "12:15" not in starts and "13:45" not in starts and "14:00" in starts


def test_schedules_apply_only_within_their_effective_dates():
    stylist = ResourceCalendar(
        STYLIST,
        windows=windows("09:00", "12:00", days=(1,), effective_until=date(2027, 3, 7))
        + windows("14:00", "16:00", days=(1,), effective_from=date(2027, 3, 8)),
    )
    cal = calendar([stylist], slot_step_minutes=60)
    assert local_starts(slots_on(cal, date(2027, 3, 1))) == ["09:00", "10:00", "11:00"]
    assert local_starts(slots_on(cal, date(2027, 3, 8))) == ["14:00", "15:00"]
    assert slots_on(cal, date(2027, 3, 2)) == []  # a Tuesday: no schedule at all


def test_day_numbers_start_on_sunday():
    assert [day_number(MONDAY + timedelta(days=k)) for k in range(7)] == [1, 2, 3, 4, 5, 6, 0]


# --- daylight saving time ---------------------------------------------------------------------------------


def night(tz: str, **overrides) -> ServiceCalendar:
    stylist = ResourceCalendar(STYLIST, windows=windows("00:00", "06:00"))
    values = {"available_hours": {"start": "00:00", "end": "06:00"}, "duration_minutes": 30}
    values.update(overrides)
    return calendar([stylist], tz=tz, slot_step_minutes=30, **values)


def test_madrid_spring_forward_offers_nothing_in_the_gap():
    slots = slots_on(night(MADRID), date(2027, 3, 28))
    starts = local_starts(slots)
    assert starts == [
        "00:00",
        "00:30",
        "01:00",
        "01:30",
        "03:00",
        "03:30",
        "04:00",
        "04:30",
        "05:00",
        "05:30",
    ]
    # 01:30 CET is 00:30 UTC; the next wall time that exists, 03:00 CEST, is 01:00 UTC.
    assert slots[3].start == datetime(2027, 3, 28, 0, 30, tzinfo=UTC)
    assert slots[4].start == datetime(2027, 3, 28, 1, 0, tzinfo=UTC)
    assert all(slot.end - slot.start == timedelta(minutes=30) for slot in slots)


def test_a_slot_across_the_gap_is_measured_on_the_wall_clock():
    # 01:30 + 60 real minutes is 03:30 on the wall: inside a window ending at 04:00, not one ending at 03:00.
    stylist = ResourceCalendar(STYLIST, windows=windows("01:00", "04:00"))
    cal = calendar([stylist], available_hours=None, slot_step_minutes=30)
    assert local_starts(slots_on(cal, date(2027, 3, 28))) == ["01:00", "01:30", "03:00"]
    # 01:00 CET + 60 min is 03:00 CEST on the wall: exactly the end of a window closing at 03:00.
    short = ResourceCalendar(STYLIST, windows=windows("01:00", "03:00"))
    cal = calendar([short], available_hours=None, slot_step_minutes=30)
    assert local_starts(slots_on(cal, date(2027, 3, 28))) == ["01:00"]


def test_madrid_fall_back_offers_the_repeated_hour_once():
    slots = slots_on(night(MADRID), date(2027, 10, 31))
    starts = local_starts(slots)
    assert starts == [f"{h:02d}:{m:02d}" for h in range(6) for m in (0, 30)]  # each wall time once
    utc = [slot.start for slot in slots]
    assert len(set(utc)) == 12
    # 02:00 and 02:30 are taken at their first occurrence (CEST, UTC+2): 00:00 and 00:30 UTC.
    assert datetime(2027, 10, 31, 0, 0, tzinfo=UTC) in utc
    assert datetime(2027, 10, 31, 0, 30, tzinfo=UTC) in utc
    # Their second occurrence (CET, UTC+1) is not offered.
    assert datetime(2027, 10, 31, 1, 0, tzinfo=UTC) not in utc
    assert datetime(2027, 10, 31, 1, 30, tzinfo=UTC) not in utc
    assert datetime(2027, 10, 31, 2, 0, tzinfo=UTC) in utc  # 03:00 CET


def test_new_york_spring_forward_and_fall_back():
    spring = slots_on(night(NEW_YORK, duration_minutes=60), date(2027, 3, 14))
    assert local_starts(spring, NEW_YORK) == [
        "00:00",
        "00:30",
        "01:00",
        "01:30",
        "03:00",
        "03:30",
        "04:00",
        "04:30",
        "05:00",
    ]
    assert spring[3].start == datetime(2027, 3, 14, 6, 30, tzinfo=UTC)  # 01:30 EST
    assert spring[3].end == datetime(2027, 3, 14, 7, 30, tzinfo=UTC)  # 03:30 EDT: one real hour later

    fall = slots_on(night(NEW_YORK, duration_minutes=60), date(2027, 11, 7))
    utc = [slot.start.hour * 60 + slot.start.minute for slot in fall]
    # 00:00 EDT = 04:00Z ... 01:30 EDT = 05:30Z, then 02:00 EST = 07:00Z: 06:00Z-06:59Z (01:xx EST) is skipped.
    assert local_starts(fall, NEW_YORK) == [
        "00:00",
        "00:30",
        "01:00",
        "01:30",
        "02:00",
        "02:30",
        "03:00",
        "03:30",
        "04:00",
        "04:30",
        "05:00",
    ]
    assert utc[:5] == [4 * 60, 4 * 60 + 30, 5 * 60, 5 * 60 + 30, 7 * 60]


def test_check_slot_refuses_the_second_pass_through_the_fall_back_hour():
    cal = night(MADRID)
    first = evaluate_slot(cal, at(MADRID, 2027, 10, 31, 2, 30, fold=0), LONG_AGO)
    assert first.start == datetime(2027, 10, 31, 0, 30, tzinfo=UTC)
    with pytest.raises(InvalidRequest) as second:
        evaluate_slot(cal, at(MADRID, 2027, 10, 31, 2, 30, fold=1), LONG_AGO)
    assert second.value.code == "repeated_time"
    assert "only the first 02:30 can be booked, 2027-10-31T02:30:00+02:00" in second.value.message


# --- a window ending at 24:00 ----------------------------------------------------------------------------


def test_a_window_ending_at_24_00_offers_the_last_slot_ending_at_midnight():
    restaurant = ResourceCalendar(STYLIST, windows=windows("18:00", "24:00"))
    cal = calendar([restaurant], available_hours=None)
    slots = slots_on(cal, MONDAY)
    starts = local_starts(slots)
    assert starts[0] == "18:00" and starts[-1] == "23:00"
    assert len(starts) == 21  # 18:00, 18:15 ... 23:00
    assert slots[-1].end == at(MADRID, 2027, 3, 2, 0)  # Tuesday's midnight
    assert evaluate_slot(cal, at(MADRID, 2027, 3, 1, 23), LONG_AGO) == slots[-1]
    assert reason(cal, at(MADRID, 2027, 3, 1, 23, 15)) == "outside_hours"
    longer = calendar([restaurant], available_hours=None, duration_minutes=61)
    assert local_starts(slots_on(longer, MONDAY))[-1] == "22:45"
    # A window of the whole day, and the service's own hours ending at "24:00", read the same.
    all_day = ResourceCalendar(STYLIST, windows=windows("00:00", "24:00"))
    evening = calendar([all_day], available_hours={"start": "18:00", "end": "24:00"})
    assert local_starts(slots_on(evening, MONDAY)) == starts


def test_24_00_is_the_next_local_midnight_around_the_madrid_clock_changes():
    evening = calendar([ResourceCalendar(STYLIST, windows=windows("18:00", "24:00"))], available_hours=None)
    all_day = ResourceCalendar(STYLIST, windows=windows("00:00", "24:00"))

    def whole_day(minutes: int, days=ALL_DAYS) -> ServiceCalendar:
        return calendar(
            [all_day],
            available_hours=None,
            available_days=days,
            duration_minutes=minutes,
            slot_step_minutes=60,
        )

    tz = ZoneInfo(MADRID)
    # The days before, of and after each change: days with a constant UTC offset and days without.
    for first in (date(2027, 3, 26), date(2027, 10, 29)):
        for day in (first + timedelta(days=k) for k in range(4)):
            midnight = datetime.combine(day + timedelta(days=1), time(), tzinfo=tz).astimezone(UTC)
            slots = slots_on(evening, day)
            assert local_starts(slots)[-1] == "23:00" and slots[-1].end == midnight, day
            assert evaluate_slot(evening, slots[-1].start, LONG_AGO) == slots[-1]
            assert slots_on(whole_day(60), day)[-1].end == midnight, day
    spring, fall = date(2027, 3, 28), date(2027, 10, 31)
    # The 23-hour day offers 23 hourly slots, the 25-hour day 24 (its repeated hour once).
    assert len(slots_on(whole_day(60), spring)) == 23
    assert len(slots_on(whole_day(60), fall)) == 24
    # A window of the whole day holds as much real time as the day has (both are Sundays; a service that is
    # not offered on Monday does not continue into it).
    sunday = (0,)
    assert local_starts(slots_on(whole_day(23 * 60, sunday), spring)) == ["00:00"]
    assert slots_on(whole_day(23 * 60 + 15, sunday), spring) == []
    assert local_starts(slots_on(whole_day(25 * 60, sunday), fall)) == ["00:00"]
    assert slots_on(whole_day(25 * 60 + 15, sunday), fall) == []
    # Continued into Monday, every hour of the 23-hour day starts a 23-hour slot; the last ends at 22:00.
    continued = slots_on(whole_day(23 * 60), spring)
    assert len(continued) == 23 and continued[-1].end == at(MADRID, 2027, 3, 29, 22)


def test_24_00_where_the_clocks_skip_the_next_midnight():
    # Santiago's Saturday 2027-09-04 ends at 04:00 UTC, when Sunday's wall clock starts at 01:00.
    bar = ResourceCalendar(
        STYLIST, windows=windows("18:00", "24:00", days=(6,)) + windows("00:00", "02:00", days=(0,))
    )
    cal = calendar([bar], tz=SANTIAGO, available_hours=None, slot_step_minutes=60)
    saturday = slots_on(cal, date(2027, 9, 4))
    assert local_starts(saturday, SANTIAGO) == ["18:00", "19:00", "20:00", "21:00", "22:00", "23:00"]
    assert saturday[-1].end == datetime(2027, 9, 5, 4, 0, tzinfo=UTC)
    assert evaluate_slot(cal, saturday[-1].start, LONG_AGO) == saturday[-1]
    # Sunday's 00:00-01:00 does not exist on the clock: its 00:00-02:00 window leaves one hour.
    assert local_starts(slots_on(cal, date(2027, 9, 5)), SANTIAGO) == ["01:00"]


# --- a shift past midnight --------------------------------------------------------------------------------

FRIDAY, SATURDAY = date(2027, 3, 5), date(2027, 3, 6)
FRIDAY_NIGHT = windows("20:00", "24:00", days=(5,))
SATURDAY_SMALL_HOURS = windows("00:00", "02:00", days=(6,))


def bar(
    *shifts: tuple[WorkingWindow, ...], tz=MADRID, allocations=(), blocks=(), **overrides
) -> ServiceCalendar:
    """One table working the given windows, booked for 60 minutes on a 15-minute grid, at any hour."""
    table = ResourceCalendar(STYLIST, windows=sum(shifts, ()), allocations=allocations, blocks=blocks)
    return calendar([table], tz=tz, **{"available_hours": None, **overrides})


def quarter_hours(first: str, last: str) -> list[str]:
    """Wall-clock times from first to last, both included, every 15 minutes."""
    start, end = (datetime.combine(MONDAY, time.fromisoformat(t)) for t in (first, last))
    return [
        (start + timedelta(minutes=15 * k)).strftime("%H:%M")
        for k in range((end - start) // timedelta(minutes=15) + 1)
    ]


def test_a_slot_starting_before_midnight_runs_on_into_the_next_days_window():
    cal = bar(FRIDAY_NIGHT, SATURDAY_SMALL_HOURS)
    friday, saturday = slots_on(cal, FRIDAY), slots_on(cal, SATURDAY)
    assert local_starts(friday) == quarter_hours("20:00", "23:45")
    assert friday[-1] == Slot(at(MADRID, 2027, 3, 5, 23, 45), at(MADRID, 2027, 3, 6, 0, 45), (STYLIST,))
    # Starts from midnight on are Saturday's, and offered as Saturday's only: no slot comes twice.
    assert local_starts(saturday) == quarter_hours("00:00", "01:00")
    both = compute_slots(cal, LONG_AGO, FRIDAY, SATURDAY)
    assert both == friday + saturday
    assert len({slot.start for slot in both}) == len(both)
    for slot in both:
        assert evaluate_slot(cal, slot.start, LONG_AGO) == slot
    assert reason(cal, at(MADRID, 2027, 3, 6, 1, 15)) == "outside_hours"
    # Touching windows make one shift on either side of midnight; the continuation ends where it does.
    split = bar(FRIDAY_NIGHT, windows("00:00", "01:00", days=(6,)), windows("01:00", "02:00", days=(6,)))
    assert local_starts(slots_on(split, FRIDAY)) == quarter_hours("20:00", "23:45")
    short = bar(FRIDAY_NIGHT, windows("00:00", "00:30", days=(6,)))
    assert local_starts(slots_on(short, FRIDAY)) == quarter_hours("20:00", "23:30")
    assert reason(short, at(MADRID, 2027, 3, 5, 23, 45)) == "outside_hours"


def test_without_the_next_days_window_in_effect_the_evening_stops_at_midnight():
    until_2300 = quarter_hours("20:00", "23:00")
    assert local_starts(slots_on(bar(FRIDAY_NIGHT), FRIDAY)) == until_2300
    for saturday in (
        windows("00:00", "02:00", days=(6,), effective_until=FRIDAY),  # ended the day before
        windows("00:00", "02:00", days=(6,), effective_from=SATURDAY + timedelta(days=7)),  # not yet
        windows("00:00", "02:00", days=(0,)),  # Sunday's
        windows("00:15", "02:00", days=(6,)),  # opens after midnight
    ):
        cal = bar(FRIDAY_NIGHT, saturday)
        assert local_starts(slots_on(cal, FRIDAY)) == until_2300
        assert reason(cal, at(MADRID, 2027, 3, 5, 23, 15)) == "outside_hours"
    # In effect from that very Saturday, after Friday's row has ended: it continues.
    handover = bar(
        windows("20:00", "24:00", days=(5,), effective_until=FRIDAY),
        windows("00:00", "02:00", days=(6,), effective_from=SATURDAY),
    )
    assert local_starts(slots_on(handover, FRIDAY)) == quarter_hours("20:00", "23:45")
    # Friday's window closing before midnight does not continue either.
    early = bar(windows("20:00", "23:45", days=(5,)), SATURDAY_SMALL_HOURS)
    assert local_starts(slots_on(early, FRIDAY)) == quarter_hours("20:00", "22:45")


def test_an_allocation_or_a_block_after_midnight_removes_the_evening_starts_it_overlaps():
    busy = (at(MADRID, 2027, 3, 6, 0, 15), at(MADRID, 2027, 3, 6, 0, 45))
    # 23:15 ends at 00:15, touching it: still free.
    expected = quarter_hours("20:00", "23:15") + ["00:45", "01:00"]
    for cal in (
        bar(FRIDAY_NIGHT, SATURDAY_SMALL_HOURS, allocations=((*busy, 1),)),
        bar(FRIDAY_NIGHT, SATURDAY_SMALL_HOURS, blocks=(busy,)),
    ):
        assert local_starts(compute_slots(cal, LONG_AGO, FRIDAY, SATURDAY)) == expected
        assert reason(cal, at(MADRID, 2027, 3, 5, 23, 30)) == "slot_taken"
        assert reason(cal, at(MADRID, 2027, 3, 5, 23, 45)) == "slot_taken"
    # The buffer keeps 23:15 away from the allocation too.
    buffered = bar(FRIDAY_NIGHT, SATURDAY_SMALL_HOURS, allocations=((*busy, 1),), buffer_time_minutes=15)
    assert local_starts(slots_on(buffered, FRIDAY))[-1] == "23:00"


def test_the_services_own_hours_and_days_decide_whether_the_evening_continues():
    def friday(**rules) -> list[str]:
        return local_starts(slots_on(bar(FRIDAY_NIGHT, SATURDAY_SMALL_HOURS, **rules), FRIDAY))

    continued, until_2300 = quarter_hours("20:00", "23:45"), quarter_hours("20:00", "23:00")
    assert friday(available_hours={"start": "00:00", "end": "24:00"}) == continued
    assert friday(available_hours=None, available_days=(5, 6)) == continued
    # Hours ending before midnight, hours not open at Saturday's midnight, no service on Saturday: it stops.
    assert friday(available_hours={"start": "00:00", "end": "23:59"}) == quarter_hours("20:00", "22:45")
    assert friday(available_hours={"start": "18:00", "end": "24:00"}) == until_2300
    assert friday(available_hours=None, available_days=(5,)) == until_2300
    # The start's day decides whether the service is offered at all.
    assert friday(available_hours=None, available_days=(6,)) == []
    # Notice is counted from the start, as ever.
    late = slots_on(bar(FRIDAY_NIGHT, SATURDAY_SMALL_HOURS), FRIDAY, now=at(MADRID, 2027, 3, 5, 23, 20))
    assert local_starts(late) == ["23:30", "23:45"]


def test_service_hours_ending_before_they_open_run_past_midnight():
    # The table works every night; the service's hours say when it is sold.
    every_night = (windows("00:00", "02:00"), windows("20:00", "24:00"))

    def starts(first: date, last: date, **rules) -> list[str]:
        cal = bar(*every_night, **rules)
        found = compute_slots(cal, LONG_AGO, first, last)
        for slot in found:
            assert evaluate_slot(cal, slot.start, LONG_AGO) == slot
        return [f"{s.start.astimezone(ZoneInfo(MADRID)):%a %H:%M}" for s in found]

    night = {"start": "20:00", "end": "02:00"}
    friday_night = [f"Fri {t}" for t in quarter_hours("20:00", "23:45")]
    small_hours = quarter_hours("00:00", "01:00")
    assert starts(FRIDAY, SATURDAY, available_hours=night) == [
        *(f"Fri {t}" for t in small_hours),  # Thursday night's
        *friday_night,
        *(f"Sat {t}" for t in small_hours),
        *(f"Sat {t}" for t in quarter_hours("20:00", "23:45")),
    ]
    # Offered on Fridays only: Friday night runs on into Saturday; Thursday night is not sold.
    assert starts(FRIDAY, SATURDAY, available_hours=night, available_days=(5,)) == [
        *friday_night,
        *(f"Sat {t}" for t in small_hours),
    ]
    # Closing at "00:00" is closing at midnight, not never opening.
    assert starts(FRIDAY, FRIDAY, available_hours={"start": "20:00", "end": "00:00"}) == [
        f"Fri {t}" for t in quarter_hours("20:00", "23:00")
    ]


def test_a_chosen_table_that_stops_at_midnight_does_not_take_the_late_starts():
    room = ResourceCalendar(
        ROOM, windows=windows("18:00", "24:00", days=(5,)) + windows("00:00", "03:00", days=(6,))
    )
    early = ResourceCalendar(STYLIST, windows=FRIDAY_NIGHT)
    late = ResourceCalendar(STYLIST_2, windows=FRIDAY_NIGHT + SATURDAY_SMALL_HOURS)
    needs = (
        ResourceNeed(ROOM),
        ResourceNeed(STYLIST, is_required=False, preference_order=0),
        ResourceNeed(STYLIST_2, is_required=False, preference_order=1),
    )
    cal = calendar([room, early, late], needs=needs, available_hours=None)
    served = {local_starts([slot])[0]: slot.resource_ids for slot in slots_on(cal, FRIDAY)}
    assert list(served) == quarter_hours("20:00", "23:45")
    assert served["23:00"] == (STYLIST, ROOM) and served["23:15"] == (STYLIST_2, ROOM)
    assert local_starts(slots_on(cal, FRIDAY, resource_ids=[STYLIST]))[-1] == "23:00"
    assert local_starts(slots_on(cal, FRIDAY, resource_ids=[STYLIST_2]))[-1] == "23:45"
    assert reason(cal, at(MADRID, 2027, 3, 5, 23, 15), resource_ids=[STYLIST]) == "outside_hours"


@pytest.mark.parametrize(
    ("tz", "saturday", "closing", "minutes", "last_saturday", "sunday"),
    [
        # 02:00 CET jumps to 03:00 CEST: 23:15 + 150 minutes is 01:45, 23:30 + 150 minutes is 03:00 CEST.
        (MADRID, date(2027, 3, 27), "02:00", 150, "23:15", []),
        # 03:00 CEST goes back to 02:00 CET: 23:45 + 4 hours is 02:45 CET, and Sunday's 00:00 ends at 03:00 CET.
        (MADRID, date(2027, 10, 30), "03:00", 240, "23:45", ["00:00"]),
        # 02:00 EST jumps to 03:00 EDT: 23:00 + 3 hours is 03:00 EDT, the closing time.
        (NEW_YORK, date(2027, 3, 13), "03:00", 180, "23:00", []),
        # 02:00 EDT goes back to 01:00 EST: 23:45 + 3 hours is 01:45 EST, and Sunday's 00:00 ends at 02:00 EST.
        (NEW_YORK, date(2027, 11, 6), "02:00", 180, "23:45", ["00:00"]),
    ],
)
def test_a_slot_past_midnight_on_the_night_the_clocks_change(
    tz, saturday, closing, minutes, last_saturday, sunday
):
    cal = bar(
        windows("20:00", "24:00", days=(6,)),
        windows("00:00", closing, days=(0,)),
        tz=tz,
        duration_minutes=minutes,
    )
    zone = ZoneInfo(tz)
    both = compute_slots(cal, LONG_AGO, saturday, saturday + timedelta(days=1))
    assert local_starts(
        [s for s in both if s.start.astimezone(zone).date() == saturday], tz
    ) == quarter_hours("20:00", last_saturday)
    assert local_starts([s for s in both if s.start.astimezone(zone).date() != saturday], tz) == sunday
    assert all(slot.end - slot.start == timedelta(minutes=minutes) for slot in both)  # real time
    for slot in both:
        assert evaluate_slot(cal, slot.start, LONG_AGO) == slot
    after_last = datetime.combine(saturday, time.fromisoformat(last_saturday)) + timedelta(minutes=15)
    if after_last.day == saturday.day:
        assert reason(cal, after_last.replace(tzinfo=zone).astimezone(UTC)) == "outside_hours"


def test_a_slot_past_midnight_where_the_clocks_skip_it():
    # Santiago's Saturday 2027-09-04 runs on into Sunday's 00:00-02:00 window, which holds one real hour.
    bar_night = windows("18:00", "24:00", days=(6,)) + windows("00:00", "02:00", days=(0,))
    saturday, sunday = date(2027, 9, 4), date(2027, 9, 5)
    # 23:45 + 60 minutes is 01:45 on Sunday's clock; 23:00 + 120 minutes is 02:00 (05:00 UTC), closing time.
    for minutes, last, end in ((60, "23:45", (4, 45)), (120, "23:00", (5, 0))):
        cal = bar(bar_night, tz=SANTIAGO, duration_minutes=minutes)
        evening = slots_on(cal, saturday)
        assert local_starts(evening, SANTIAGO) == quarter_hours("18:00", last)
        assert evening[-1].end == datetime(2027, 9, 5, *end, tzinfo=UTC)
        for slot in evening:
            assert evaluate_slot(cal, slot.start, LONG_AGO) == slot
    assert reason(cal, at(SANTIAGO, 2027, 9, 4, 23, 15)) == "outside_hours"  # 120 minutes: 02:15
    # Sunday's own slots are Sunday's, from 01:00, its first wall-clock time.
    assert local_starts(slots_on(bar(bar_night, tz=SANTIAGO), sunday), SANTIAGO) == ["01:00"]
    # A window continued to the next day's 24:00, where the clocks skip the following midnight.
    whole = bar(
        windows("00:00", "24:00", days=(5, 6)), tz=SANTIAGO, duration_minutes=25 * 60, slot_step_minutes=60
    )
    friday = slots_on(whole, date(2027, 9, 3))
    assert local_starts(friday, SANTIAGO)[-1] == "23:00"
    assert friday[-1].end == datetime(2027, 9, 5, 4, 0, tzinfo=UTC)  # Saturday's 24:00, Sunday's 01:00
    assert evaluate_slot(whole, friday[-1].start, LONG_AGO) == friday[-1]


# --- buffers, blocks --------------------------------------------------------------------------------------


def test_touching_intervals_do_not_collide_and_the_buffer_keeps_the_next_client_away():
    busy = (at(MADRID, 2027, 3, 1, 10), at(MADRID, 2027, 3, 1, 11), 1)
    stylist = ResourceCalendar(STYLIST, windows=windows("08:00", "18:00"), allocations=(busy,))
    no_buffer = local_starts(slots_on(calendar([stylist], available_hours=None), MONDAY))
    assert "09:00" in no_buffer and "11:00" in no_buffer  # [09,10) and [11,12) touch [10,11)
    assert "09:15" not in no_buffer and "10:45" not in no_buffer

    # Our own buffer: a 09:00 slot would occupy [09:00, 10:15), so 08:45 is the latest before.
    buffered = local_starts(
        slots_on(calendar([stylist], available_hours=None, buffer_time_minutes=15), MONDAY)
    )
    assert "08:45" in buffered and "09:00" not in buffered and "11:00" in buffered

    # Their buffer is inside their allocation: [10:00, 11:15) keeps 11:00 away, 11:15 is free.
    theirs = (at(MADRID, 2027, 3, 1, 10), at(MADRID, 2027, 3, 1, 11, 15), 1)
    stylist = ResourceCalendar(STYLIST, windows=windows("08:00", "18:00"), allocations=(theirs,))
    starts = local_starts(slots_on(calendar([stylist], available_hours=None), MONDAY))
    assert "11:00" not in starts and "11:15" in starts


def test_the_buffer_may_run_past_closing_time():
    stylist = ResourceCalendar(STYLIST, windows=windows("09:00", "12:00"))
    starts = local_starts(slots_on(calendar([stylist], buffer_time_minutes=30), MONDAY))
    assert starts[-1] == "11:00"
    slot = slots_on(calendar([stylist], buffer_time_minutes=30), MONDAY)[-1]
    assert slot.end == at(MADRID, 2027, 3, 1, 12)  # the client's slot does not include the buffer


def test_a_one_off_block_removes_the_slots_it_overlaps():
    block = (at(MADRID, 2027, 3, 1, 12), at(MADRID, 2027, 3, 1, 13))
    stylist = ResourceCalendar(STYLIST, windows=windows("09:00", "18:00"), blocks=(block,))
    starts = local_starts(slots_on(calendar([stylist], buffer_time_minutes=30), MONDAY))
    assert "11:00" in starts  # ends when the block starts (its buffer may overlap the block)
    assert "11:15" not in starts and "12:45" not in starts
    assert "13:00" in starts


def test_a_weekly_lunch_stays_at_one_oclock_local_across_dst():
    tz = ZoneInfo(MADRID)
    first = (at(MADRID, 2027, 3, 22, 13), at(MADRID, 2027, 3, 22, 14))  # Monday, CET
    lunches = expand_block(
        *first, "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR", tz, at(MADRID, 2027, 3, 25, 0), at(MADRID, 2027, 3, 31, 0)
    )
    local = [(s.astimezone(tz).strftime("%a %d %H:%M"), e - s) for s, e in lunches]
    assert local == [
        ("Thu 25 13:00", timedelta(hours=1)),
        ("Fri 26 13:00", timedelta(hours=1)),
        ("Mon 29 13:00", timedelta(hours=1)),  # CEST now: 11:00 UTC instead of 12:00
        ("Tue 30 13:00", timedelta(hours=1)),
    ]
    assert lunches[2][0] == datetime(2027, 3, 29, 11, 0, tzinfo=UTC)

    stylist = ResourceCalendar(STYLIST, windows=windows("09:00", "18:00"), blocks=tuple(lunches))
    cal = calendar([stylist], slot_step_minutes=60)
    for day in (date(2027, 3, 26), date(2027, 3, 29)):
        assert local_starts(slots_on(cal, day)) == [
            "09:00",
            "10:00",
            "11:00",
            "12:00",
            "14:00",
            "15:00",
            "16:00",
            "17:00",
        ]


def test_a_recurring_block_in_new_york_fall_back_week():
    tz = ZoneInfo(NEW_YORK)
    first = (at(NEW_YORK, 2027, 11, 1, 13), at(NEW_YORK, 2027, 11, 1, 14))  # Monday, EDT
    lunches = expand_block(
        *first, "FREQ=DAILY", tz, at(NEW_YORK, 2027, 11, 6, 0), at(NEW_YORK, 2027, 11, 9, 0)
    )
    assert [s.astimezone(tz).strftime("%d %H:%M") for s, _ in lunches] == ["06 13:00", "07 13:00", "08 13:00"]
    assert [s.hour for s, _ in lunches] == [17, 18, 18]  # EDT then EST


def test_recurrence_rules_until_count_and_a_first_occurrence_off_the_rule():
    tz = ZoneInfo(MADRID)
    first = (at(MADRID, 2027, 3, 1, 13), at(MADRID, 2027, 3, 1, 14))
    window = (at(MADRID, 2027, 3, 1, 0), at(MADRID, 2027, 3, 10, 0))
    until = expand_block(*first, "FREQ=DAILY;UNTIL=20270303T235959Z", tz, *window)
    assert [s.astimezone(tz).day for s, _ in until] == [1, 2, 3]
    lower_case = expand_block(*first, "freq=daily;until=20270303t235959z", tz, *window)  # as dateutil allows
    assert lower_case == until
    counted = expand_block(*first, "RRULE:FREQ=DAILY;COUNT=2", tz, *window)
    assert [s.astimezone(tz).day for s, _ in counted] == [1, 2]
    # The first occurrence (a Monday) counts even though the rule says Wednesdays.
    odd = expand_block(*first, "FREQ=WEEKLY;BYDAY=WE", tz, *window)
    assert [s.astimezone(tz).day for s, _ in odd] == [1, 3]
    # Outside the window nothing is returned, and a one-off block is returned as it is.
    assert expand_block(*first, None, tz, *window) == [first]
    assert expand_block(*first, None, tz, at(MADRID, 2027, 3, 2, 0), at(MADRID, 2027, 3, 3, 0)) == []


def test_an_until_falling_on_an_occurrence_keeps_that_occurrence():
    # RFC 5545: UNTIL is inclusive; an occurrence exactly at UNTIL is the last one, not dropped.
    tz = ZoneInfo(MADRID)
    first = (at(MADRID, 2027, 3, 1, 13), at(MADRID, 2027, 3, 1, 14))  # 12:00Z (CET)
    window = (at(MADRID, 2027, 3, 1, 0), at(MADRID, 2027, 3, 10, 0))
    lunches = expand_block(*first, "FREQ=DAILY;UNTIL=20270303T120000Z", tz, *window)
    assert [s.astimezone(tz).day for s, _ in lunches] == [1, 2, 3]


@pytest.mark.parametrize(
    "rule",
    ["FREQ=DAILY;UNTIL=20270303", "RRULE:FREQ=DAILY;UNTIL=20270303;INTERVAL=1", "freq=daily;until=20270303"],
)
def test_an_until_written_as_a_date_keeps_the_occurrences_of_that_day(rule):
    # RFC 5545 wants a date-time UNTIL on a timed rule; written as a date it means through that day. dateutil
    # read it as that day's midnight, and the block's last lunch was offered for booking.
    tz = ZoneInfo(MADRID)
    first = (at(MADRID, 2027, 3, 1, 13), at(MADRID, 2027, 3, 1, 14))
    window = (at(MADRID, 2027, 3, 1, 0), at(MADRID, 2027, 3, 10, 0))
    lunches = expand_block(*first, rule, tz, *window)
    assert [s.astimezone(tz).day for s, _ in lunches] == [1, 2, 3]


@pytest.mark.parametrize(
    ("exdate", "days_left"),
    [
        ("EXDATE;VALUE=DATE:20270302", [1, 1, 3, 3, 4, 4]),
        ("EXDATE;VALUE=DATE:20270301,20270303", [2, 2, 4, 4]),  # the first occurrence's day too
        ("exdate;value=date:20270304\nEXDATE:20270302T090000", [1, 1, 2, 3, 3]),  # beside a date-time
    ],
)
def test_an_exdate_written_as_a_date_removes_the_occurrences_of_that_day(exdate, days_left):
    # dateutil removed only an occurrence at that day's midnight: the break cancelled for the day still blocked it.
    tz = ZoneInfo(MADRID)
    first = (at(MADRID, 2027, 3, 1, 9), at(MADRID, 2027, 3, 1, 10))
    window = (at(MADRID, 2027, 3, 1, 0), at(MADRID, 2027, 3, 5, 0))
    breaks = expand_block(*first, f"RRULE:FREQ=DAILY;BYHOUR=9,16\n{exdate}", tz, *window)
    assert [s.astimezone(tz).day for s, _ in breaks] == days_left


def test_an_exdate_date_on_the_spring_forward_day_removes_that_days_occurrence():
    tz = ZoneInfo(MADRID)
    first = (at(MADRID, 2027, 3, 27, 13), at(MADRID, 2027, 3, 27, 14))
    window = (at(MADRID, 2027, 3, 27, 0), at(MADRID, 2027, 3, 30, 0))
    lunches = expand_block(*first, "RRULE:FREQ=DAILY\nEXDATE;VALUE=DATE:20270328", tz, *window)
    assert [s.astimezone(tz).strftime("%d %H:%M") for s, _ in lunches] == ["27 13:00", "29 13:00"]


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=WEEKLY;BYDAY=MO,WE",
        "FREQ=DAILY;INTERVAL=3",
        "FREQ=WEEKLY;INTERVAL=2",
        "FREQ=WEEKLY;INTERVAL=2;BYDAY=TU,TH;WKST=SU",
        "FREQ=DAILY;UNTIL=20270410T120000Z",
        "FREQ=MONTHLY;BYDAY=1FR",
        "FREQ=HOURLY;INTERVAL=5;BYHOUR=13",
        # Exceptions and extra dates, as calendar exports write them: floating and in UTC.
        "RRULE:FREQ=WEEKLY;BYDAY=MO,WE\nEXDATE:20270322T130000,20270405T130000",
        "RRULE:FREQ=WEEKLY;BYDAY=MO\nEXDATE:20270322T120000Z\nRDATE:20270326T130000",
    ],
)
def test_a_rule_started_years_ago_gives_the_occurrences_dateutil_gives(rule):
    """The expansion skips whole periods of an old rule; the occurrences must be the ones walked one by one."""
    tz = ZoneInfo(MADRID)
    first = (at(MADRID, 2024, 2, 6, 13), at(MADRID, 2024, 2, 6, 14))  # a Tuesday, CET
    window = (at(MADRID, 2027, 3, 20, 0), at(MADRID, 2027, 4, 20, 0))  # across the spring-forward night
    found = expand_block(*first, rule, tz, *window)
    plain_rule = rule.replace("UNTIL=20270410T120000Z", "UNTIL=20270410T140000")  # the same instant, local
    plain_rule = plain_rule.replace("EXDATE:20270322T120000Z", "EXDATE:20270322T130000")
    walked = rrulestr(plain_rule, dtstart=datetime(2024, 2, 6, 13, 0), forceset=True)
    expected = [
        (
            local.replace(tzinfo=tz).astimezone(UTC),
            local.replace(tzinfo=tz).astimezone(UTC) + timedelta(hours=1),
        )
        for local in walked.between(datetime(2027, 3, 19), datetime(2027, 4, 21))
    ]
    expected = [(s, e) for s, e in expected if s < window[1] and e > window[0]]
    assert found == expected and found
    assert all(s.astimezone(tz).hour == 13 for s, _ in found)


def test_an_old_rule_with_exceptions_is_not_walked_from_its_start():
    """A weekday lunch with an EXDATE line, set up years ago, was walked day by day on every booking of its
    resource (about 300 ms each with sixty of them); only a DTSTART line keeps the rule's own start."""
    first, low = datetime(2020, 1, 6, 13, 0), datetime(2027, 3, 19)
    rule = "RRULE:FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR\nEXDATE:20270322T130000"
    skipped = _skip_ahead(rule, _rrule_parts(rule), first, low)
    assert low - timedelta(days=1) < skipped <= low and skipped.time() == first.time()
    with_start = "DTSTART:20200106T130000\n" + rule
    assert _skip_ahead(with_start, _rrule_parts(with_start), first, low) == first


def test_an_unreadable_rule_blocks_the_whole_window():
    tz = ZoneInfo(MADRID)
    window = (at(MADRID, 2027, 3, 1, 0), at(MADRID, 2027, 3, 10, 0))
    first = (at(MADRID, 2027, 3, 1, 13), at(MADRID, 2027, 3, 1, 14))
    assert expand_block(*first, "FREQ=SOMETIMES", tz, *window) == [window]


# --- capacity, several resources, candidates ------------------------------------------------------------


def test_capacity_counts_the_units_of_every_overlapping_allocation():
    ten, eleven = at(MADRID, 2027, 3, 1, 10), at(MADRID, 2027, 3, 1, 11)
    room = lambda *allocations: ResourceCalendar(  # noqa: E731
        ROOM, capacity=3, windows=windows("09:00", "18:00"), allocations=allocations
    )
    need = lambda quantity: (ResourceNeed(ROOM, quantity=quantity),)  # noqa: E731
    two_taken = room((ten, eleven, 1), (ten, eleven, 1))
    assert "10:00" in local_starts(slots_on(calendar([two_taken], needs=need(1)), MONDAY))
    assert "10:00" not in local_starts(slots_on(calendar([two_taken], needs=need(2)), MONDAY))
    assert "09:00" in local_starts(slots_on(calendar([two_taken], needs=need(2)), MONDAY))
    full = room((ten, eleven, 2), (ten, eleven, 1))
    assert "10:00" not in local_starts(slots_on(calendar([full], needs=need(1)), MONDAY))
    assert "11:00" in local_starts(slots_on(calendar([full], needs=need(1)), MONDAY))
    # More units than the resource has: never.
    assert slots_on(calendar([room()], needs=need(4)), MONDAY) == []


def test_capacity_counts_the_units_in_use_at_the_busiest_instant_of_the_occupied_interval():
    # Two allocations that follow each other never hold units at the same time: a slot overlapping both
    # needs room beside the larger, not beside their sum.
    nine, ten, eleven = (at(MADRID, 2027, 3, 1, h) for h in (9, 10, 11))
    room = ResourceCalendar(
        ROOM, capacity=2, windows=windows("09:00", "18:00"), allocations=((nine, ten, 1), (ten, eleven, 1))
    )
    starts = local_starts(slots_on(calendar([room]), MONDAY))
    assert {"09:00", "09:30", "10:00"} <= set(starts)  # at most 1 + 1 in use at any instant

    # An allocation that starts inside the slot counts from its start: 10:30-11:00 is full.
    late = (at(MADRID, 2027, 3, 1, 10, 30), eleven, 1)
    room = ResourceCalendar(
        ROOM, capacity=2, windows=windows("09:00", "18:00"), allocations=((nine, eleven, 1), late)
    )
    starts = local_starts(slots_on(calendar([room]), MONDAY))
    assert "09:30" in starts  # ends as the second one starts
    assert "09:45" not in starts and "10:00" not in starts and "10:30" not in starts
    assert "11:00" in starts


def test_capacity_null_means_one():
    busy = (at(MADRID, 2027, 3, 1, 10), at(MADRID, 2027, 3, 1, 11), 1)
    stylist = ResourceCalendar(STYLIST, capacity=None, windows=windows("09:00", "18:00"), allocations=(busy,))
    assert "10:00" not in local_starts(slots_on(calendar([stylist]), MONDAY))


def test_a_stylist_and_a_chair_are_offered_only_where_both_are_free():
    stylist = ResourceCalendar(
        STYLIST,
        windows=windows("09:00", "14:00"),
        allocations=((at(MADRID, 2027, 3, 1, 10), at(MADRID, 2027, 3, 1, 11), 1),),
    )
    chair = ResourceCalendar(
        CHAIR,
        windows=windows("10:00", "18:00"),
        blocks=((at(MADRID, 2027, 3, 1, 12), at(MADRID, 2027, 3, 1, 13)),),
    )
    slots = slots_on(calendar([chair, stylist], slot_step_minutes=60), MONDAY)
    assert local_starts(slots) == ["11:00", "13:00"]  # 09 chair closed, 10 stylist busy, 12 chair blocked
    assert all(slot.resource_ids == (STYLIST, CHAIR) for slot in slots)  # sorted by id


def test_two_stylists_share_one_chair_by_preference_order():
    s1_busy = (at(MADRID, 2027, 3, 1, 11), at(MADRID, 2027, 3, 1, 12), 1)
    chair_busy = (at(MADRID, 2027, 3, 1, 10), at(MADRID, 2027, 3, 1, 11), 1)
    resources = [
        ResourceCalendar(STYLIST, windows=windows("09:00", "13:00"), allocations=(s1_busy,)),
        ResourceCalendar(STYLIST_2, windows=windows("09:00", "13:00")),
        ResourceCalendar(CHAIR, windows=windows("09:00", "13:00"), allocations=(chair_busy,)),
    ]
    needs = (
        ResourceNeed(CHAIR),
        ResourceNeed(STYLIST_2, is_required=False, preference_order=2),
        ResourceNeed(STYLIST, is_required=False, preference_order=1),
    )
    cal = calendar(resources, needs=needs, slot_step_minutes=60)
    served = {
        local: slot.resource_ids
        for local, slot in zip(local_starts(slots_on(cal, MONDAY)), slots_on(cal, MONDAY), strict=True)
    }
    assert served == {
        "09:00": (STYLIST, CHAIR),  # the preferred stylist
        "11:00": (STYLIST_2, CHAIR),  # the preferred one is busy
        "12:00": (STYLIST, CHAIR),
    }  # 10:00: the chair is taken, whoever the stylist
    # The client's chosen stylist restricts the slots, and the chair always comes with it.
    chosen = slots_on(cal, MONDAY, resource_ids=[STYLIST])
    assert local_starts(chosen) == ["09:00", "12:00"]
    assert evaluate_slot(cal, at(MADRID, 2027, 3, 1, 9), LONG_AGO, [STYLIST_2]).resource_ids == (
        STYLIST_2,
        CHAIR,
    )
    assert reason(cal, at(MADRID, 2027, 3, 1, 11), resource_ids=[STYLIST]) == "slot_taken"  # no silent swap
    assert reason(cal, at(MADRID, 2027, 3, 1, 10)) == "slot_taken"


def test_equal_preference_goes_to_the_least_booked_that_day():
    morning = [(at(MADRID, 2027, 3, 1, h), at(MADRID, 2027, 3, 1, h + 1), 1) for h in (8,)]
    busy_day = [(at(MADRID, 2027, 3, 1, h), at(MADRID, 2027, 3, 1, h + 1), 1) for h in (15, 16, 17)]
    resources = [
        ResourceCalendar(STYLIST, windows=windows("08:00", "18:00"), allocations=tuple(busy_day)),
        ResourceCalendar(STYLIST_2, windows=windows("08:00", "18:00"), allocations=tuple(morning)),
    ]
    needs = (ResourceNeed(STYLIST, is_required=False), ResourceNeed(STYLIST_2, is_required=False))
    cal = calendar(resources, needs=needs, slot_step_minutes=60)
    by_start = dict(zip(local_starts(slots_on(cal, MONDAY)), slots_on(cal, MONDAY), strict=True))
    assert by_start["10:00"].resource_ids == (STYLIST_2,)  # 1 h booked against 3 h
    assert by_start["16:00"].resource_ids == (STYLIST_2,)
    assert evaluate_slot(cal, at(MADRID, 2027, 3, 1, 10), LONG_AGO).resource_ids == (STYLIST_2,)
    # Another day, nobody is booked: the tie goes to the lower id.
    tuesday = slots_on(cal, date(2027, 3, 2))
    assert tuesday[0].resource_ids == (STYLIST,)


def test_a_candidate_off_duty_is_skipped_and_the_reason_is_outside_hours_when_nobody_works():
    resources = [
        ResourceCalendar(STYLIST, windows=windows("09:00", "12:00")),
        ResourceCalendar(STYLIST_2, windows=windows("12:00", "15:00")),
    ]
    needs = (ResourceNeed(STYLIST, is_required=False), ResourceNeed(STYLIST_2, is_required=False))
    cal = calendar(resources, needs=needs, slot_step_minutes=60)
    slots = slots_on(cal, MONDAY)
    assert [(s, slot.resource_ids) for s, slot in zip(local_starts(slots), slots, strict=True)] == [
        ("09:00", (STYLIST,)),
        ("10:00", (STYLIST,)),
        ("11:00", (STYLIST,)),
        ("12:00", (STYLIST_2,)),
        ("13:00", (STYLIST_2,)),
        ("14:00", (STYLIST_2,)),
    ]
    assert reason(cal, at(MADRID, 2027, 3, 1, 16)) == "outside_hours"
    assert reason(cal, at(MADRID, 2027, 3, 1, 10), resource_ids=[STYLIST_2]) == "outside_hours"


def test_no_linked_resources_or_an_unscheduled_required_resource_means_no_slots():
    assert slots_on(calendar([], needs=()), MONDAY) == []
    # The loader leaves an inactive required resource without a calendar.
    lonely = calendar([], needs=(ResourceNeed(STYLIST),))
    assert slots_on(lonely, MONDAY) == []
    assert reason(lonely, at(MADRID, 2027, 3, 1, 10)) == "outside_hours"


# --- advance limits ---------------------------------------------------------------------------------------


def test_min_and_max_advance():
    stylist = ResourceCalendar(STYLIST, windows=windows("09:00", "18:00"))
    now = at(MADRID, 2027, 3, 1, 8, 50)
    cal = calendar([stylist], min_advance_booking_hours=2, max_advance_booking_days=1, slot_step_minutes=30)
    both = compute_slots(cal, now, MONDAY, MONDAY + timedelta(days=3))
    assert local_starts(both)[0] == "11:00"  # 10:50 is the earliest: 11:00 is the first grid time after
    assert max(slot.start for slot in both) <= now + timedelta(days=1)
    assert local_starts([both[-1]]) == ["17:00"]  # Tuesday's slots start at 09:00 > 08:50 + 1 day
    assert {slot.start.astimezone(ZoneInfo(MADRID)).date() for slot in both} == {MONDAY}

    assert reason(cal, at(MADRID, 2027, 3, 1, 10, 30), now) == "too_soon"
    assert evaluate_slot(cal, at(MADRID, 2027, 3, 1, 11), now).start == at(MADRID, 2027, 3, 1, 11)
    assert reason(cal, at(MADRID, 2027, 3, 2, 9), now) == "too_far"
    exactly = calendar([stylist], min_advance_booking_hours=0, max_advance_booking_days=1)
    assert evaluate_slot(exactly, at(MADRID, 2027, 3, 2, 9), at(MADRID, 2027, 3, 1, 9)).start == at(
        MADRID, 2027, 3, 2, 9
    )


def test_a_slot_exactly_at_the_notice_or_at_the_horizon_is_offered_and_bookable():
    # Both limits are inclusive: a start exactly min_advance_booking_hours after now, or exactly
    # max_advance_booking_days after it, is in the list and the booking accepts it.
    stylist = ResourceCalendar(STYLIST, windows=windows("09:00", "18:00"))
    now = at(MADRID, 2027, 3, 1, 9)
    cal = calendar([stylist], min_advance_booking_hours=2, max_advance_booking_days=1)
    slots = compute_slots(cal, now, MONDAY, MONDAY + timedelta(days=1))
    assert slots[0].start == now + timedelta(hours=2)  # Monday 11:00
    assert slots[-1].start == now + timedelta(days=1)  # Tuesday 09:00
    assert evaluate_slot(cal, now + timedelta(hours=2), now).start == now + timedelta(hours=2)
    assert evaluate_slot(cal, now + timedelta(days=1), now).start == now + timedelta(days=1)


def test_without_notice_a_slot_starting_now_is_not_offered():
    # Past by the time anybody books it: the booking refuses a start at `now` (start_in_past), so neither
    # the list nor an alternative may offer it.
    stylist = ResourceCalendar(STYLIST, windows=windows("09:00", "18:00"))
    now = at(MADRID, 2027, 3, 1, 10)
    cal = calendar([stylist], min_advance_booking_hours=0)
    assert local_starts(compute_slots(cal, now, MONDAY, MONDAY))[0] == "10:15"
    assert reason(cal, now, now) == "too_soon"
    assert local_starts(nearest_slots(cal, now, now, 1, MONDAY, MONDAY)) == ["10:15"]


# --- check_slot reasons, and agreement with the slot list --------------------------------------------------


def test_check_slot_reasons():
    stylist = ResourceCalendar(
        STYLIST,
        windows=windows("09:00", "18:00", days=(1, 2, 3, 4, 5)),
        allocations=((at(MADRID, 2027, 3, 1, 10), at(MADRID, 2027, 3, 1, 11), 1),),
        blocks=((at(MADRID, 2027, 3, 1, 15), at(MADRID, 2027, 3, 1, 16)),),
    )
    cal = calendar([stylist], available_days=(1, 2, 3, 4, 5, 6))
    ok = evaluate_slot(cal, at(MADRID, 2027, 3, 1, 9), LONG_AGO)
    assert ok == Slot(at(MADRID, 2027, 3, 1, 9), at(MADRID, 2027, 3, 1, 10), (STYLIST,))
    assert reason(cal, at(MADRID, 2027, 3, 1, 9, 5)) == "off_grid"
    assert reason(cal, at(MADRID, 2027, 3, 1, 10)) == "slot_taken"
    assert reason(cal, at(MADRID, 2027, 3, 1, 15, 30)) == "slot_taken"  # blocked
    assert reason(cal, at(MADRID, 2027, 3, 1, 17, 15)) == "outside_hours"  # would end after 18:00
    assert reason(cal, at(MADRID, 2027, 3, 6, 10)) == "outside_hours"  # Saturday: the stylist does not work
    assert reason(cal, at(MADRID, 2027, 3, 7, 10)) == "outside_hours"  # Sunday: the service is closed
    assert reason(cal, at(MADRID, 2027, 3, 1, 9), resource_ids=[ROOM]) == "resource_not_eligible"
    with pytest.raises(InvalidRequest) as raised:
        evaluate_slot(cal, datetime(2027, 3, 1, 9), LONG_AGO)
    assert raised.value.code == "start_without_offset"


def test_choosing_two_interchangeable_resources_is_not_allowed():
    resources = [ResourceCalendar(r, windows=windows("09:00", "18:00")) for r in (STYLIST, STYLIST_2)]
    needs = tuple(ResourceNeed(r, is_required=False) for r in (STYLIST, STYLIST_2))
    cal = calendar(resources, needs=needs)
    assert (
        reason(cal, at(MADRID, 2027, 3, 1, 9), resource_ids=[STYLIST, STYLIST_2]) == "resource_not_eligible"
    )


# Five local days around each DST change of both zones.
DST_WEEKS = [
    (MADRID, date(2027, 3, 26)),
    (MADRID, date(2027, 10, 29)),
    (NEW_YORK, date(2027, 3, 12)),
    (NEW_YORK, date(2027, 11, 5)),
]


def _random_calendar(rng: random.Random, tz: str, first_day: date) -> ServiceCalendar:
    zone = ZoneInfo(tz)
    base = datetime.combine(first_day, time(), tzinfo=zone)
    ids = [uuid.UUID(int=n) for n in range(1, 5)]
    resources = []
    for resource_id in ids:
        shifts = []
        for day in ALL_DAYS:
            h = rng.choice([0, 1, 7, 8, 9])
            shifts += windows(
                f"{h:02d}:{rng.choice(['00', '30'])}", f"{rng.randint(h + 3, 23):02d}:00", days=(day,)
            )
        allocations, blocks = [], []
        for _ in range(rng.randint(0, 40)):
            start = base + timedelta(minutes=15 * rng.randint(0, 4 * 24 * 5))
            allocations.append(
                (
                    start.astimezone(UTC),
                    (start + timedelta(minutes=rng.choice([15, 30, 45, 60, 75]))).astimezone(UTC),
                    rng.choice([1, 1, 2]),
                )
            )
        for _ in range(rng.randint(0, 3)):
            start = base + timedelta(minutes=15 * rng.randint(0, 4 * 24 * 5))
            blocks.append(
                (
                    start.astimezone(UTC),
                    (start + timedelta(minutes=rng.choice([30, 60, 240]))).astimezone(UTC),
                )
            )
        resources.append(
            ResourceCalendar(
                resource_id,
                capacity=rng.choice([None, 1, 2, 3]),
                windows=shifts,
                allocations=tuple(allocations),
                blocks=tuple(blocks),
            )
        )
    quantity = min(rng.choice([1, 2]), resources[1].capacity or 1)
    needs = [ResourceNeed(ids[0], quantity=1), ResourceNeed(ids[1], quantity=quantity)]
    needs += [ResourceNeed(r, is_required=False, preference_order=rng.randint(0, 1)) for r in ids[2:]]
    return ServiceCalendar(
        SERVICE,
        tz,
        rules(
            duration_minutes=rng.choice([15, 30, 45, 60, 90]),
            buffer_time_minutes=rng.choice([0, 5, 15]),
            available_hours={"start": "00:00", "end": "24:00"},
            slot_step_minutes=rng.choice([15, 30]),
        ),
        tuple(needs),
        tuple(resources),
    )


def _oracle_free(cal: ServiceCalendar, start: datetime, resource_id: uuid.UUID, quantity: int) -> bool:
    """The rule as written, one allocation at a time."""
    length = timedelta(minutes=cal.rules.duration_minutes)
    occupied_end = start + length + timedelta(minutes=cal.rules.buffer_time_minutes)
    resource = next(r for r in cal.resources if r.resource_id == resource_id)
    if any(a < start + length and start < b for a, b in resource.blocks):
        return False
    # What is in use changes only where an allocation starts: the busiest instant is one of those, or `start`.
    instants = [start] + [a for a, _, _ in resource.allocations if start < a < occupied_end]
    used = max(sum(u for a, b, u in resource.allocations if a <= t < b) for t in instants)
    return used + quantity <= (resource.capacity or 1)


def _oracle_works(cal: ServiceCalendar, start: datetime, resource_id: uuid.UUID) -> bool:
    """Start and end read on the wall clock of the start's local date, against that day's window."""
    zone = ZoneInfo(cal.timezone)
    local_start = start.astimezone(zone)
    local_end = (start + timedelta(minutes=cal.rules.duration_minutes)).astimezone(zone)
    midnight = datetime.combine(local_start.date(), time())
    start_wall = local_start.replace(tzinfo=None) - midnight
    end_wall = local_end.replace(tzinfo=None) - midnight
    weekday = (local_start.weekday() + 1) % 7
    resource = next(r for r in cal.resources if r.resource_id == resource_id)
    return any(
        w.day_of_week == weekday
        and timedelta(hours=w.start_time.hour, minutes=w.start_time.minute) <= start_wall
        and end_wall <= timedelta(hours=w.end_time.hour, minutes=w.end_time.minute)
        for w in resource.windows
    )


def _oracle_bookable(cal: ServiceCalendar, start: datetime) -> bool:
    def ok(need: ResourceNeed) -> bool:
        return _oracle_works(cal, start, need.resource_id) and _oracle_free(
            cal, start, need.resource_id, need.quantity
        )

    required = [n for n in cal.needs if n.is_required]
    candidates = [n for n in cal.needs if not n.is_required]
    return all(ok(n) for n in required) and any(ok(n) for n in candidates)


@pytest.mark.parametrize("seed", range(16))
def test_the_fast_sweep_agrees_with_the_rule_written_plainly_and_with_check_slot(seed):
    rng = random.Random(seed)
    tz, first_day = DST_WEEKS[seed % len(DST_WEEKS)]
    cal = _random_calendar(rng, tz, first_day)
    days = (first_day, first_day + timedelta(days=4))
    slots = compute_slots(cal, LONG_AGO, *days)
    offered = {slot.start: slot for slot in slots}
    assert len(offered) == len(slots) and [s.start for s in slots] == sorted(offered)
    required = [n for n in cal.needs if n.is_required]
    for slot in slots:
        for need in cal.needs:
            if need.resource_id in slot.resource_ids:
                assert _oracle_works(cal, slot.start, need.resource_id), (slot, need)
                assert _oracle_free(cal, slot.start, need.resource_id, need.quantity), (slot, need)
        assert all(n.resource_id in slot.resource_ids for n in required)
        assert len(slot.resource_ids) == len(required) + 1
    # Every quarter hour of the days: check_slot agrees with the list, and the plain rule agrees with both.
    zone = ZoneInfo(tz)
    t = datetime.combine(days[0], time(), tzinfo=zone).astimezone(UTC)
    checked = 0
    while t < datetime.combine(days[1] + timedelta(days=1), time(), tzinfo=zone).astimezone(UTC):
        local = t.astimezone(zone)
        on_grid = (local.hour * 60 + local.minute) % cal.rules.slot_step_minutes == 0
        second_pass = local.replace(fold=0).astimezone(UTC) != t
        try:
            found = evaluate_slot(cal, t, LONG_AGO)
        except (SlotUnavailable, InvalidRequest) as refused:
            assert t not in offered, (t, refused.code)
            assert (on_grid and not second_pass) or refused.code == (
                "repeated_time" if on_grid else "off_grid"
            )
            if refused.code not in ("off_grid", "repeated_time"):
                assert not _oracle_bookable(cal, t), (t, refused.code)
        else:
            assert offered.get(t) == found
            assert on_grid and not second_pass and _oracle_bookable(cal, t)
            checked += 1
        t += timedelta(minutes=15)
    assert checked == len(slots)


def test_nearest_slots_look_both_ways():
    stylist = ResourceCalendar(
        STYLIST,
        windows=windows("09:00", "18:00"),
        allocations=((at(MADRID, 2027, 3, 1, 10), at(MADRID, 2027, 3, 1, 12), 1),),
    )
    cal = calendar([stylist], slot_step_minutes=30)
    near = nearest_slots(cal, at(MADRID, 2027, 3, 1, 11), LONG_AGO, 3, MONDAY, MONDAY)
    assert local_starts(near) == ["09:00", "12:00", "12:30"]  # 2 h before, 1 h after, 1.5 h after


def test_exceptions_and_extra_dates_written_in_utc_or_with_a_zone_are_read_on_the_local_clock():
    """Calendar exports write EXDATE and RDATE in UTC (…Z) or with a TZID; the rule runs on the wall clock."""
    tz = ZoneInfo(MADRID)
    first = (at(MADRID, 2027, 3, 1, 13), at(MADRID, 2027, 3, 1, 14))
    window = (at(MADRID, 2027, 3, 1, 0), at(MADRID, 2027, 3, 5, 0))
    for rule in (
        "RRULE:FREQ=DAILY\nEXDATE:20270302T120000Z",  # 13:00 in Madrid, in UTC
        "RRULE:FREQ=DAILY\nEXDATE;TZID=America/New_York:20270302T070000",  # the same instant
        "RRULE:FREQ=DAILY\nEXDATE:20270302T130000",  # floating: the local wall clock
    ):
        lunches = expand_block(*first, rule, tz, *window)
        assert [s.astimezone(tz).strftime("%d %H:%M") for s, _ in lunches] == [
            "01 13:00",
            "03 13:00",
            "04 13:00",
        ]
    extra = expand_block(*first, "RRULE:FREQ=DAILY;COUNT=2\nRDATE:20270304T150000Z", tz, *window)
    assert [s.astimezone(tz).strftime("%d %H:%M") for s, _ in extra] == ["01 13:00", "02 13:00", "04 16:00"]


@pytest.mark.parametrize("excluded", ["20270301T130000", "20270301T120000Z"])
def test_an_exdate_may_remove_the_first_occurrence(excluded):
    # RFC 5545: "The EXDATE property can be used to exclude the value specified in DTSTART." The first
    # occurrence was added back after dateutil's exclusions: a lunch cancelled on its first day still blocked
    # it (found in review).
    tz = ZoneInfo(MADRID)
    first = (at(MADRID, 2027, 3, 1, 13), at(MADRID, 2027, 3, 1, 14))
    lunch = expand_block(*first, f"RRULE:FREQ=DAILY\nEXDATE:{excluded}", tz, *day_window(MADRID, MONDAY, 3))
    assert [s.astimezone(tz).day for s, _ in lunch] == [2, 3]
    stylist = ResourceCalendar(STYLIST, windows=windows("09:00", "18:00"), blocks=tuple(lunch))
    assert "13:00" in local_starts(slots_on(calendar([stylist], slot_step_minutes=60), MONDAY))


# New York falls back on 7 November 2027: 01:00-02:00 comes twice, EDT (05:xxZ) then EST (06:xxZ). A daily
# 01:30-02:00 block's occurrence that night is at the first 01:30, 05:30Z, as every occurrence in a repeated
# hour is. Instants in UTC were read on the naive wall clock, where the second pass reads as the first.
NIGHT_BLOCK = (at(NEW_YORK, 2027, 11, 5, 1, 30), at(NEW_YORK, 2027, 11, 5, 2))
FIRST_0130 = datetime(2027, 11, 7, 5, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        # UNTIL bounds inclusively, as an instant: 06:00Z (the second 01:00) is after 05:30Z.
        ("RRULE:FREQ=DAILY;UNTIL=20271107T060000Z", [5, 6, 7]),
        ("RRULE:UNTIL=20271107T060000Z;FREQ=DAILY", [5, 6, 7]),
        # 06:30Z (the second 01:30) is no occurrence: nothing is removed.
        ("RRULE:FREQ=DAILY;COUNT=4\nEXDATE:20271107T063000Z", [5, 6, 7, 8]),
    ],
)
def test_utc_instants_in_the_repeated_autumn_hour_are_read_as_instants(rule, expected):
    tz = ZoneInfo(NEW_YORK)
    night = expand_block(*NIGHT_BLOCK, rule, tz, *day_window(NEW_YORK, date(2027, 11, 5), 5))
    assert [s.astimezone(tz).day for s, _ in night] == expected
    assert FIRST_0130 in [s for s, _ in night]
    stylist = ResourceCalendar(STYLIST, windows=windows("00:00", "24:00"), blocks=tuple(night))
    all_day = calendar(
        [stylist], tz=NEW_YORK, duration_minutes=30, available_hours=None, slot_step_minutes=30
    )
    sunday = slots_on(all_day, date(2027, 11, 7))
    assert FIRST_0130 - timedelta(minutes=30) in {slot.start for slot in sunday}  # 01:00 EDT is free
    assert FIRST_0130 not in {slot.start for slot in sunday}


def test_a_utc_rdate_in_the_repeated_autumn_hour_blocks_that_instant():
    tz = ZoneInfo(NEW_YORK)
    rule = "RRULE:FREQ=DAILY;COUNT=1\nRDATE:20271107T063000Z"  # the second 01:30
    extra = expand_block(*NIGHT_BLOCK, rule, tz, *day_window(NEW_YORK, date(2027, 11, 5), 5))
    assert [s for s, _ in extra] == [NIGHT_BLOCK[0], datetime(2027, 11, 7, 6, 30, tzinfo=UTC)]


def day_window(tz: str, first: date, days: int) -> tuple[datetime, datetime]:
    zone = ZoneInfo(tz)
    start = datetime.combine(first, time(), tzinfo=zone)
    return start.astimezone(UTC), datetime.combine(
        first + timedelta(days=days), time(), tzinfo=zone
    ).astimezone(UTC)


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=DAILY;INTERVAL=0",  # dateutil divided by it
        "FREQ=WEEKLY;INTERVAL=0",
        "FREQ=MONTHLY;INTERVAL=0",  # dateutil walked in place for ever
        "FREQ=YEARLY;INTERVAL=-1",
        "RRULE:FREQ=DAILY\nEXDATE;TZID=Mars/Olympus:20270302T130000",
        "FREQ=FORTNIGHTLY",
    ],
)
def test_a_rule_that_cannot_be_read_blocks_the_window_at_once(rule):
    tz = ZoneInfo(MADRID)
    first = (at(MADRID, 2026, 3, 2, 13), at(MADRID, 2026, 3, 2, 14))  # a year before the window
    window = (at(MADRID, 2027, 3, 1, 0), at(MADRID, 2027, 3, 5, 0))
    found: list = []
    expanding = threading.Thread(
        target=lambda: found.append(expand_block(*first, rule, tz, *window)), daemon=True
    )
    expanding.start()
    expanding.join(timeout=10)
    assert found == [[window]], "the expansion crashed or hung"
