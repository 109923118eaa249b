"""The availability planner against the slow oracle of tests/availability_oracle.py.

The planner is fast because of shortcuts; the oracle has none of them (its docstring says how it reads the
rules, the wall-clock convention included). Hypothesis generates small calendars in zones with unusual offsets
and DST shifts (30 minutes on Lord Howe Island, -03:30 in St John's, +05:45 in Kathmandu, clock changes at
midnight in Santiago), mostly around the clock changes of 2027.
Recurring blocks (`expand_block`, which skips whole periods of an old rule) are checked against every
occurrence walked from the first.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import rrulestr
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.availability import (
    ResourceCalendar,
    ResourceNeed,
    ServiceCalendar,
    ServiceRules,
    WorkingWindow,
    compute_slots,
    evaluate_slot,
    expand_block,
)
from core.errors import InvalidRequest, SlotUnavailable
from tests.availability_oracle import LONG_AGO, ONE_DAY, SERVICE, day_of_week, grid, judge, oracle_slots

ZONES = (
    "Europe/Madrid",
    "America/New_York",
    "UTC",
    "Australia/Lord_Howe",  # +10:30, +11:00 in the southern summer: a 30-minute shift
    "Asia/Kathmandu",  # +05:45, no DST
    "America/St_Johns",  # -03:30, -02:30 in summer
    "America/Santiago",  # -04:00, -03:00 in the southern summer: the clocks change at midnight
)

# --- generated calendars ---------------------------------------------------------------------------------


def clock_changes(zone_name: str, year: int = 2027) -> list[date]:
    """The local dates of `year` whose UTC offset at midnight differs from the next midnight's."""
    zone = ZoneInfo(zone_name)
    day, found = date(year, 1, 1), []
    while day.year == year:
        here = datetime.combine(day, time(), tzinfo=zone).utcoffset()
        if here != datetime.combine(day + ONE_DAY, time(), tzinfo=zone).utcoffset():
            found.append(day)
        day += ONE_DAY
    return found


CLOCK_CHANGES = {name: clock_changes(name) for name in ZONES}
ORDINARY_DAYS = (date(2027, 3, 1), date(2027, 6, 16), date(2027, 9, 3), date(2027, 12, 30))


def local_midnight_utc(day: date, zone_name: str) -> datetime:
    return datetime.combine(day, time(), tzinfo=ZoneInfo(zone_name)).astimezone(UTC)


def hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


DAY_END = 24 * 60  # a schedule may end at 24:00, the end of the day
# Minutes of the day: any, the half hours (where shifts usually change), the small hours (where clocks change).
MINUTES = st.integers(0, DAY_END) | st.integers(0, 48).map(lambda k: 30 * k) | st.integers(50, 200)
SHAPES = st.sampled_from(["long", "night", "small hours", "any"])
QUARTER = st.integers(0, 3)  # a one-in-four choice; the rarer variant is always 3, so that examples shrink
DURATIONS = st.sampled_from([15, 30, 45, 60, 90]) | st.integers(5, 180)
BUFFERS = st.sampled_from([0, 5, 15]) | st.integers(0, 30)
MIN_ADVANCE = st.sampled_from([0, 1, 2]) | st.integers(0, 48)
STEPS = st.sampled_from([5, 10, 15, 20, 30, 45, 60])
QUANTITIES = st.sampled_from([1, 1, 1, 2])
CAPACITIES = st.sampled_from([None, 1, 2, 3])
SERVICE_DAYS = st.sets(st.integers(0, 6), min_size=1).map(lambda s: tuple(sorted(s)))
LENGTHS = st.sampled_from([15, 30, 60]) | st.integers(1, 240)


def until(low: int) -> st.SearchStrategy[int]:
    """An end from `low` to 24:00, often 24:00 itself: open until midnight."""
    return st.integers(low, DAY_END) | st.just(DAY_END)


@st.composite
def window_spans(draw) -> tuple[int, int]:
    """A window as two minutes of the day, the end after the start (the schedules' CHECK)."""
    shape = draw(SHAPES)
    if shape == "long":  # most of the day: many slots, so that the other rules get a chance to bite
        start = draw(st.integers(0, 12 * 60))
        return start, draw(until(max(start + 60, 12 * 60)))
    if shape == "night":  # from before the clock change to the evening
        return draw(st.integers(0, 150)), draw(until(151))
    if shape == "small hours":  # both ends near the clock changes (00:00-03:30 local in these zones)
        a, b = draw(st.integers(0, 240)), draw(st.integers(0, 240))
    else:
        a, b = draw(MINUTES), draw(MINUTES)
    if a == b:
        b = a + 1 if a < DAY_END else a - 1
    return min(a, b), max(a, b)


@st.composite
def around(draw, shift: tuple[int, int]) -> tuple[int, int]:
    """The scenario's usual shift, often moved a little at either end (so that the resources' hours meet)."""
    start, end = shift
    if draw(st.booleans()):
        start = max(0, start + draw(st.integers(-90, 90)))
        end = min(DAY_END, end + draw(st.integers(-90, 90)))
    return (start, end) if start < end else shift


@st.composite
def working_windows(
    draw, date_from: date, days: int, shift: tuple[int, int], overnight: tuple[int, int] | None
) -> tuple[WorkingWindow, ...]:
    out = []
    if overnight is not None and draw(st.integers(0, 7)) < 7:
        # The scenario's shift past midnight, often moved a little: from the evening to 24:00, and from 00:00
        # on the next day. Mostly every evening of the range; else one, or one morning alone (which then
        # continues nothing).
        nudge = st.just(0) | st.integers(-90, 90)
        evening = (min(max(0, overnight[0] + draw(nudge)), DAY_END - 1), DAY_END)
        morning = (0, min(max(1, overnight[1] + draw(nudge)), DAY_END))
        evenings = tuple(sorted({day_of_week(date_from + timedelta(days=k)) for k in range(days)}))
        mornings = tuple((d + 1) % 7 for d in evenings)
        if draw(QUARTER) == 3:
            evenings = (day_of_week(date_from + timedelta(days=draw(st.integers(0, days - 1)))),)
            mornings = tuple((d + 1) % 7 for d in evenings) if draw(QUARTER) < 3 else evenings
        effective = {}
        if draw(QUARTER) == 3:
            # Near the range's end: the morning after its last day may be out of effect.
            near = st.none() | st.integers(days - 2, days + 1).map(lambda k: date_from + timedelta(days=k))
            effective = {"effective_from": draw(near), "effective_until": draw(near)}
        for (lo, hi), week in ((evening, evenings), (morning, mornings)):
            out += [WorkingWindow(d, *clock_times(lo, hi), **effective) for d in week]
    for k in range(draw(st.integers(1, 3))):
        start, end = draw(around(shift)) if k == 0 and draw(QUARTER) < 3 else draw(window_spans())
        # Every day of the week, or one day: mostly one of the range's one to four days.
        week = tuple(range(7))
        if draw(st.booleans()):
            week = (day_of_week(date_from + timedelta(days=draw(st.integers(0, days)))),)
        effective = {}
        if draw(QUARTER) == 3:
            near = st.none() | st.integers(-1, days).map(lambda k: date_from + timedelta(days=k))
            effective = {"effective_from": draw(near), "effective_until": draw(near)}
        spans = [(start, end)]
        if end < DAY_END and draw(st.booleans()):
            # A second window touching or overlapping the first: the docstring merges them into one shift.
            spans.append((draw(st.integers(start + 1, end)), draw(st.integers(end + 1, DAY_END))))
        for lo, hi in spans:
            out += [WorkingWindow(d, *clock_times(lo, hi), **effective) for d in week]
    return tuple(out)


def clock_times(lo: int, hi: int) -> tuple[time, time]:
    # 24:00 comes as the loader hands it over: 00:00.
    return time(lo // 60, lo % 60), time(hi // 60 % 24, hi % 60)


@st.composite
def resource_calendars(
    draw,
    resource_id: uuid.UUID,
    zone_name: str,
    date_from: date,
    days: int,
    shift: tuple[int, int],
    overnight: tuple[int, int] | None,
) -> ResourceCalendar:
    # Blocks and allocations from half a day before the range to half a day after it, at any minute or on
    # the quarter hours (so that some touch a slot exactly).
    base = local_midnight_utc(date_from, zone_name) - timedelta(hours=12)
    span = (days + 1) * 24 * 60
    offsets = st.integers(0, span) | st.integers(0, span // 15).map(lambda k: 15 * k)
    blocks = []
    for _ in range(draw(st.integers(0, 2))):
        start = base + timedelta(minutes=draw(offsets))
        blocks.append((start, start + timedelta(minutes=draw(LENGTHS))))
    allocations = []
    for _ in range(draw(st.integers(0, 5))):
        start = base + timedelta(minutes=draw(offsets))
        allocations.append((start, start + timedelta(minutes=draw(LENGTHS)), draw(st.integers(1, 3))))
    # Aware datetimes, in UTC or in the tenant's zone: the docstring does not say which.
    zone = draw(st.sampled_from([UTC, ZoneInfo(zone_name)]))
    return ResourceCalendar(
        resource_id,
        capacity=draw(CAPACITIES),
        windows=draw(working_windows(date_from, days, shift, overnight)),
        blocks=tuple((a.astimezone(zone), b.astimezone(zone)) for a, b in blocks),
        allocations=tuple((a.astimezone(zone), b.astimezone(zone), units) for a, b, units in allocations),
    )


@st.composite
def service_rules(draw, shift: tuple[int, int]) -> ServiceRules:
    hours = None
    if draw(QUARTER) == 3:
        opens, closes = draw(around(shift)) if draw(st.booleans()) else draw(window_spans())
        # Opening at 00:00 and closing at 24:00 now and then: hours that continue into the next day.
        opens = 0 if draw(QUARTER) == 3 else opens
        hours = {"start": hhmm(opens), "end": "24:00" if draw(st.booleans()) else hhmm(closes)}
        if draw(QUARTER) == 3:  # the other way round: hours that run past midnight (or end at "00:00")
            hours = {"start": hhmm(closes % DAY_END), "end": hhmm(opens)}
    return ServiceRules(
        duration_minutes=draw(DURATIONS),
        buffer_time_minutes=draw(BUFFERS),
        available_days=draw(SERVICE_DAYS) if draw(QUARTER) == 3 else None,
        available_hours=hours,
        min_advance_booking_hours=draw(MIN_ADVANCE),
        max_advance_booking_days=draw(st.integers(0, 5)) if draw(QUARTER) == 3 else None,
        slot_step_minutes=draw(STEPS),
    )


@st.composite
def scenarios(draw) -> tuple[ServiceCalendar, datetime, date, date]:
    """A calendar, the current time, and the local dates asked for."""
    zone_name = draw(st.sampled_from(ZONES))
    changes = CLOCK_CHANGES[zone_name]
    # Mostly a clock change in the range; ordinary days for the zones without any, and now and then.
    anchor = draw(st.sampled_from(changes or ORDINARY_DAYS) | st.sampled_from(changes + list(ORDINARY_DAYS)))
    days = draw(st.integers(1, 4))
    # Mostly a range that contains the anchor, now and then one that ends just before it or starts after.
    date_from = anchor - timedelta(days=draw(st.integers(0, days - 1) | st.integers(-1, days)))
    date_to = date_from + timedelta(days=days - 1)

    shift = draw(window_spans())
    # Mostly a shift past midnight too (its evening's start, its next morning's end), which most
    # resources work: windows closing at 24:00 followed by windows opening at 00:00.
    overnight = None
    if draw(QUARTER) < 3:
        overnight = (
            draw(st.integers(12 * 60, DAY_END - 1) | st.integers(0, DAY_END - 1)),
            draw(st.integers(1, 300)),
        )
    # Ids dealt at random, so that "the lowest id" is not always the first need.
    ids = [uuid.UUID(int=n) for n in draw(st.permutations(range(1, 6)))]
    needs = [ResourceNeed(ids.pop(), quantity=draw(QUANTITIES)) for _ in range(draw(st.integers(1, 2)))]
    for _ in range(draw(st.integers(0, 3))):
        preference = draw(st.integers(0, 2))
        needs.append(
            ResourceNeed(ids.pop(), draw(QUANTITIES), is_required=False, preference_order=preference)
        )
    needs = draw(st.permutations(needs))
    # Now and then a needed resource has no calendar at all (inactive, or never scheduled).
    resources = tuple(
        draw(resource_calendars(need.resource_id, zone_name, date_from, days, shift, overnight))
        for need in needs
        if draw(st.integers(0, 19)) < 19
    )
    calendar = ServiceCalendar(SERVICE, zone_name, draw(service_rules(shift)), tuple(needs), resources)
    now = LONG_AGO
    if draw(st.booleans()):  # some time from three days before the range to its last day
        minutes = draw(st.integers(-3 * 24 * 60, days * 24 * 60))
        now = local_midnight_utc(date_from, zone_name) + timedelta(minutes=minutes)
    return calendar, now, date_from, date_to


def oracle_settings(examples: int) -> settings:
    # Derandomized, so that CI sees the same examples every run; no example database in the working tree.
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


# --- the discrepancies found, as plain examples ---------------------------------------------------------
# Madrid falls back on Sunday 2027-10-31: 03:00 CEST becomes 02:00 CET. A 30-minute slot at 02:30 CEST
# (00:30 UTC) ends at 03:00 CEST, which the wall clock shows as 02:00: its wall-clock end precedes its start.

MADRID = "Europe/Madrid"
FALL_BACK = date(2027, 10, 31)
AT_0230_CEST = datetime(2027, 10, 31, 0, 30, tzinfo=UTC)
CHAIR, STYLIST = uuid.UUID(int=1), uuid.UUID(int=2)
NIGHT_RULES = ServiceRules(duration_minutes=30, available_days=None, slot_step_minutes=30)


def sunday(start: str, end: str) -> tuple[WorkingWindow, ...]:
    return (WorkingWindow(0, time.fromisoformat(start), time.fromisoformat(end)),)


# The only (required) stylist works 02:00-02:20.
STYLIST_UNTIL_0220 = ServiceCalendar(
    SERVICE,
    MADRID,
    NIGHT_RULES,
    (ResourceNeed(STYLIST),),
    (ResourceCalendar(STYLIST, windows=sunday("02:00", "02:20")),),
)
# A required chair open 00:00-06:00, and one interchangeable stylist who works 02:00-02:20.
CANDIDATE_UNTIL_0220 = ServiceCalendar(
    SERVICE,
    MADRID,
    NIGHT_RULES,
    (ResourceNeed(CHAIR), ResourceNeed(STYLIST, is_required=False)),
    (
        ResourceCalendar(CHAIR, windows=sunday("00:00", "06:00")),
        ResourceCalendar(STYLIST, windows=sunday("02:00", "02:20")),
    ),
)


def test_evaluate_slot_refuses_a_start_after_closing_when_the_clocks_go_back():
    assert compute_slots(STYLIST_UNTIL_0220, LONG_AGO, FALL_BACK, FALL_BACK) == []
    with pytest.raises(SlotUnavailable) as refused:
        evaluate_slot(STYLIST_UNTIL_0220, AT_0230_CEST, LONG_AGO)
    assert refused.value.code == "outside_hours"


def test_a_candidate_does_not_serve_a_slot_starting_after_its_shift_when_the_clocks_go_back():
    assert compute_slots(CANDIDATE_UNTIL_0220, LONG_AGO, FALL_BACK, FALL_BACK) == []
    with pytest.raises(SlotUnavailable) as refused:
        evaluate_slot(CANDIDATE_UNTIL_0220, AT_0230_CEST, LONG_AGO)
    assert refused.value.code == "outside_hours"


# A bar open 20:00-02:00 in Santiago (20:00-24:00, and 00:00-02:00 of the next day), over the night the
# clocks skip Sunday 2027-09-05's first hour: Saturday's 24:00 is 01:00 on Sunday's wall clock.
SANTIAGO_SPRING = date(2027, 9, 4)
BAR_UNTIL_0200 = ServiceCalendar(
    SERVICE,
    "America/Santiago",
    NIGHT_RULES,
    (ResourceNeed(STYLIST),),
    (
        ResourceCalendar(
            STYLIST,
            windows=tuple(
                WorkingWindow(day, start, end)
                for day in range(7)
                for start, end in ((time(20), time(0)), (time(0), time(2)))
            ),
        ),
    ),
)


# The same bar with 90-minute tables: Saturday's late starts end in Sunday's one real hour (01:00-02:00).
BAR_90_UNTIL_0200 = replace(BAR_UNTIL_0200, rules=replace(NIGHT_RULES, duration_minutes=90))


# --- the properties --------------------------------------------------------------------------------------


@oracle_settings(120)
@given(scenarios())
@example((CANDIDATE_UNTIL_0220, LONG_AGO, FALL_BACK, FALL_BACK))
@example((BAR_UNTIL_0200, LONG_AGO, SANTIAGO_SPRING, SANTIAGO_SPRING + ONE_DAY))
@example((BAR_90_UNTIL_0200, LONG_AGO, SANTIAGO_SPRING, SANTIAGO_SPRING + ONE_DAY))
def test_compute_slots_equals_the_oracle(scenario):
    calendar, now, date_from, date_to = scenario
    assert compute_slots(calendar, now, date_from, date_to) == oracle_slots(calendar, now, date_from, date_to)


@oracle_settings(50)
@given(scenarios(), st.randoms(use_true_random=False))
@example((STYLIST_UNTIL_0220, LONG_AGO, FALL_BACK, FALL_BACK), random.Random(0))
@example((BAR_UNTIL_0200, LONG_AGO, SANTIAGO_SPRING, SANTIAGO_SPRING + ONE_DAY), random.Random(0))
@example((BAR_90_UNTIL_0200, LONG_AGO, SANTIAGO_SPRING, SANTIAGO_SPRING + ONE_DAY), random.Random(0))
def test_evaluate_slot_agrees_with_compute_slots(scenario, rng):
    calendar, now, date_from, date_to = scenario
    zone = ZoneInfo(calendar.timezone)
    offered = {slot.start: slot for slot in compute_slots(calendar, now, date_from, date_to)}
    for slot in offered.values():
        assert evaluate_slot(calendar, slot.start, now) == slot

    # The grid times just before and after each run of offered slots (where an off-by-one shows), and a
    # sample of the others (all of them on a one-day grid with a step of 30 minutes or more), are refused
    # with a reason the oracle agrees with.
    starts = grid(calendar, date_from, date_to)
    edges = {
        starts[j]
        for i, start in enumerate(starts)
        if start in offered
        for j in (i - 1, i + 1)
        if 0 <= j < len(starts) and starts[j] not in offered
    }
    others = [start for start in starts if start not in offered and start not in edges]
    for start in sorted(edges) + rng.sample(others, min(50, len(others))):
        with pytest.raises((InvalidRequest, SlotUnavailable)) as refused:
            evaluate_slot(calendar, start, now)
        _, reasons = judge(calendar, now, start)
        assert refused.value.code in reasons, (start.astimezone(zone), refused.value.code, reasons)

    for start in starts:
        # The second pass through a fall-back hour is never offered, and refused as such.
        second = start.astimezone(zone).replace(fold=1).astimezone(UTC)
        if second != start:
            with pytest.raises(InvalidRequest) as repeated:
                evaluate_slot(calendar, second, now)
            assert repeated.value.code == "repeated_time"
    # A minute off the grid is refused as such (every step is at least five minutes).
    for start in list(offered)[:5]:
        with pytest.raises(InvalidRequest) as off:
            evaluate_slot(calendar, start + timedelta(minutes=1), now)
        assert off.value.code == "off_grid"


@oracle_settings(80)
@given(scenarios(), st.integers(0, 2))
@example((CANDIDATE_UNTIL_0220, LONG_AGO, FALL_BACK, FALL_BACK), 0)
def test_a_chosen_resource_restricts_the_slots_as_the_oracle_says(scenario, pick):
    calendar, now, date_from, date_to = scenario
    # One candidate, the client's choice; without candidates a required resource (no restriction at all).
    candidates = [n.resource_id for n in calendar.needs if not n.is_required]
    choices = candidates or [n.resource_id for n in calendar.needs]
    choice = choices[pick % len(choices)]
    expected = oracle_slots(calendar, now, date_from, date_to, [choice])
    assert compute_slots(calendar, now, date_from, date_to, [choice]) == expected


# --- recurring blocks ------------------------------------------------------------------------------------


def plain_occurrences(
    start: datetime, end: datetime, rule: str, zone: ZoneInfo, window_start: datetime, window_end: datetime
) -> list[tuple[datetime, datetime]]:
    """Every occurrence walked from the first, with an aware local start: dateutil then steps the wall clock
    and compares a UTC UNTIL as an instant. No skipping ahead, no widened search."""
    length = end - start
    starts = {start}  # RFC 5545: the first occurrence counts even when the rule does not match it
    for occurrence in rrulestr(rule, dtstart=start.astimezone(zone)):
        if occurrence.astimezone(UTC) >= window_end + ONE_DAY:
            break  # wall-clock order is UTC order give or take a clock change
        starts.add(occurrence.astimezone(UTC))
    return [(s, s + length) for s in sorted(starts) if s < window_end and s + length > window_start]


WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")


@st.composite
def recurring_blocks(draw) -> tuple[datetime, datetime, str, ZoneInfo, datetime, datetime]:
    zone_name = draw(st.sampled_from(ZONES))
    zone = ZoneInfo(zone_name)
    anchor = draw(st.sampled_from(CLOCK_CHANGES[zone_name] or ORDINARY_DAYS))
    window_start = local_midnight_utc(anchor - timedelta(days=draw(st.integers(0, 2))), zone_name)
    window_end = window_start + timedelta(days=draw(st.integers(1, 4)))
    # The first occurrence from years before the window (where the planner skips whole periods) to inside it.
    first_day = anchor - timedelta(days=draw(st.integers(-2, 3 * 365)))
    first_minute = draw(st.integers(0, 24 * 60 - 1) | st.sampled_from([60, 90, 120, 150, 180]))
    start = datetime.combine(first_day, time(first_minute // 60, first_minute % 60), tzinfo=zone)
    start = start.astimezone(UTC)
    end = start + timedelta(minutes=draw(LENGTHS))
    parts = [f"FREQ={draw(st.sampled_from(['DAILY', 'WEEKLY', 'MONTHLY']))}"]
    if draw(st.booleans()):
        parts.append(f"INTERVAL={draw(st.integers(1, 3))}")
    if draw(st.booleans()):
        days = draw(st.sets(st.sampled_from(WEEKDAYS), min_size=1, max_size=3))
        parts.append("BYDAY=" + ",".join(sorted(days, key=WEEKDAYS.index)))
    ending = draw(st.sampled_from(["none", "count", "until"]))
    if ending == "count":
        parts.append(f"COUNT={draw(st.integers(1, 2000))}")
    elif ending == "until":
        until = window_start + timedelta(minutes=draw(st.integers(-24 * 60, 5 * 24 * 60)))
        parts.append(f"UNTIL={until:%Y%m%dT%H%M%S}Z")
    return start, end, "RRULE:" + ";".join(parts), zone, window_start, window_end


@oracle_settings(150)
@given(recurring_blocks())
def test_expand_block_equals_every_occurrence_walked_from_the_first(block):
    start, end, rule, zone, window_start, window_end = block
    expected = plain_occurrences(start, end, rule, zone, window_start, window_end)
    assert expand_block(start, end, rule, zone, window_start, window_end) == expected
