"""The slow availability oracle, written from the module docstring of core/availability.py.

The planner is fast because of shortcuts (a constant UTC offset per ordinary day, jumps over busy stretches,
prefix sums for capacity, one candidate order per day). The oracle has none of them: it walks every grid time
of every local date and applies each rule of the docstring on its own, one allocation at a time. The unit tests
(tests/unit/test_availability_oracle.py) compare the planner with it on generated calendars, the database tests
(tests/integration/test_availability_rows.py) the loader and the planner on random rows.

Wall-clock convention (the docstring and `_Planner._wall_to_utc`): a slot's start and end are read on the
wall clock of the slot's local date, as time since that date's midnight. The end is the wall-clock time of
the instant start + duration, so it may pass 24:00 or, when the clocks go back during the slot, be earlier
than the start. A slot lies inside a window [open, close] when open <= start < close and end <= close.
A window closing at 24:00 (a `WorkingWindow` ending at 00:00, or the service's "24:00"; no hours at all is
00:00-24:00) closes when the local date ends; the oracle reads that without the wall clock: the slot's last
moment must still be on its date. Unless the next date has a window opening at 00:00 (for the service: its
hours open at 00:00 and it is offered that date): then the slot may run on into that window, read on the next
date's own wall clock, but no further than the next date's end.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from core.availability import (
    ResourceCalendar,
    ServiceCalendar,
    Slot,
)

ZERO = timedelta(0)
ONE_DAY = timedelta(days=1)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
SERVICE = uuid.UUID(int=100)


# --- the oracle ------------------------------------------------------------------------------------------


def day_of_week(day: date) -> int:
    """0 = Sunday ... 6 = Saturday, as in the docstring."""
    return (day.weekday() + 1) % 7


def first_instant(local: datetime, zone: ZoneInfo) -> datetime | None:
    """The UTC instant of a naive local wall-clock time, its first occurrence; None when the clock skips it."""
    instant = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != local:
        return None  # a spring-forward gap: the round trip lands elsewhere
    return instant


def clock(text: str) -> timedelta:
    hours, minutes = text.split(":")
    return timedelta(hours=int(hours), minutes=int(minutes))


def since_midnight(value: time) -> timedelta:
    return timedelta(hours=value.hour, minutes=value.minute, seconds=value.second)


def closing(value: time) -> timedelta:
    """A working window's end: 00:00 stands for 24:00 (see WorkingWindow)."""
    return ONE_DAY if value == time(0) else since_midnight(value)


def merged_windows(resource: ResourceCalendar, day: date) -> tuple[tuple[timedelta, timedelta], ...]:
    return _merged_windows(_ByIdentity(resource.windows), day)


class _ByIdentity:
    """A key for the cache below that hashes in constant time (hashing the windows themselves cost more than
    merging them)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.value is self.value


@functools.lru_cache(maxsize=1024)  # only for speed: the same resource and day come back per grid time
def _merged_windows(windows: _ByIdentity, day: date) -> tuple[tuple[timedelta, timedelta], ...]:
    """The working windows on `day`, unioned pairwise until no two overlap or touch."""
    spans = [
        (since_midnight(w.start_time), closing(w.end_time))
        for w in windows.value
        if w.day_of_week == day_of_week(day)
        and (w.effective_from is None or w.effective_from <= day)
        and (w.effective_until is None or day <= w.effective_until)
    ]
    return union(spans)


def union(spans: list[tuple[timedelta, timedelta]]) -> tuple[tuple[timedelta, timedelta], ...]:
    """The spans unioned pairwise until no two overlap or touch."""
    spans = list(spans)
    changed = True
    while changed:
        changed = False
        for i in range(len(spans)):
            for j in range(i + 1, len(spans)):
                (a, b), (c, d) = spans[i], spans[j]
                if a <= d and c <= b:
                    spans[i] = (min(a, c), max(b, d))
                    del spans[j]
                    changed = True
                    break
            if changed:
                break
    return tuple(spans)


@dataclass(frozen=True)
class Timing:
    """Where a slot falls on the local calendar."""

    day: date  # its local date
    start_wall: timedelta  # its start on that date's wall clock, since midnight
    end_wall: timedelta  # its end's wall-clock time, since that date's midnight (may pass 24:00)
    last_day: date  # the local date of its last moment (it is half-open)
    tail_wall: timedelta  # its end's wall-clock time, since the next date's midnight


def inside(
    window: tuple[timedelta, timedelta], following: tuple[timedelta, timedelta] | None, slot: Timing
) -> bool:
    """`following`: the next date's window opening at 00:00, into which a window closing at 24:00 runs on."""
    opens, closes = window
    if closes != ONE_DAY:
        return opens <= slot.start_wall < closes and slot.end_wall <= closes
    # 24:00: the end of the slot's local date, whatever the wall clock shows then.
    if opens > slot.start_wall:
        return False
    if slot.last_day == slot.day:
        return True
    if following is None or slot.last_day != slot.day + ONE_DAY:
        return False
    # Read on the next date's clock; a window closing at its 24:00 holds whatever ends on that date.
    return following[1] == ONE_DAY or slot.tail_wall <= following[1]


def works(resource: ResourceCalendar, slot: Timing) -> bool:
    following = next((w for w in merged_windows(resource, slot.day + ONE_DAY) if w[0] == ZERO), None)
    return any(inside(window, following, slot) for window in merged_windows(resource, slot.day))


def has_room(
    resource: ResourceCalendar, quantity: int, start: datetime, end: datetime, occupied_end: datetime
) -> bool:
    """No block overlaps [start, end); at every instant of [start, occupied_end) the allocations leave
    `quantity` (what is in use changes only where an allocation starts, so those instants are enough)."""
    if any(a < end and start < b for a, b in resource.blocks):
        return False
    instants = [start] + [a for a, _, _ in resource.allocations if start < a < occupied_end]
    used = max(sum(units for a, b, units in resource.allocations if a <= t < b) for t in instants)
    return used + quantity <= capacity(resource)


def capacity(resource: ResourceCalendar) -> int:
    return 1 if resource.capacity is None else resource.capacity


def booked(resource: ResourceCalendar, day: date, zone: ZoneInfo) -> timedelta:
    """Booked time of the allocations starting on the local date `day` (their buffer included, units not)."""
    # In UTC: subtracting two datetimes of the same zone gives wall-clock time, not elapsed time.
    return sum(
        (
            b.astimezone(UTC) - a.astimezone(UTC)
            for a, b, _ in resource.allocations
            if a.astimezone(zone).date() == day
        ),
        ZERO,
    )


def judge(
    calendar: ServiceCalendar, now: datetime, start: datetime, resource_ids=()
) -> tuple[tuple[uuid.UUID, ...] | None, set[str]]:
    """For a grid start (first occurrence): the sorted ids serving it, or None and every reason it fails.

    The reasons are the `SlotUnavailable` codes that evaluate_slot may plausibly give; all of them are
    collected because the planner reports only the first it meets.
    """
    rules = calendar.rules
    zone = ZoneInfo(calendar.timezone)
    length = timedelta(minutes=rules.duration_minutes)
    end = start + length
    occupied_end = end + timedelta(minutes=rules.buffer_time_minutes)
    local = start.astimezone(zone)
    day = local.date()
    midnight = datetime.combine(day, time())
    end_local = end.astimezone(zone).replace(tzinfo=None)
    slot = Timing(
        day=day,
        start_wall=local.replace(tzinfo=None) - midnight,
        end_wall=end_local - midnight,
        last_day=(end - timedelta(microseconds=1)).astimezone(zone).date(),
        tail_wall=end_local - (midnight + ONE_DAY),
    )
    reasons = set()

    # A start at `now` itself is past by the time anybody books it.
    if start <= now or start < now + timedelta(hours=rules.min_advance_booking_hours):
        reasons.add("too_soon")
    if rules.max_advance_booking_days is not None and start > now + timedelta(
        days=rules.max_advance_booking_days
    ):
        reasons.add("too_far")

    def offered(on: date) -> bool:
        return rules.available_days is None or day_of_week(on) in rules.available_days

    opens, closes = ZERO, ONE_DAY
    if rules.available_hours:
        opens, closes = (clock(rules.available_hours["start"]), clock(rules.available_hours["end"]))

    def sold(on: date) -> tuple[tuple[timedelta, timedelta], ...]:
        """The service's own windows on a date. Hours closing at or before they open (18:00-02:00) are the
        evening of an offered date until 24:00 and the small hours of the date after it."""
        if closes > opens:
            return ((opens, closes),) if offered(on) else ()
        spans = [(opens, ONE_DAY)] if offered(on) else []
        if closes > ZERO and offered(on - ONE_DAY):
            spans.append((ZERO, closes))
        return union(spans)

    # The next date's window opening at 00:00 continues today's closing at 24:00.
    following = next((w for w in sold(day + ONE_DAY) if w[0] == ZERO), None)
    if not any(inside(window, following, slot) for window in sold(day)):
        reasons.add("outside_hours")
    if not calendar.needs:
        reasons.add("outside_hours")

    # A needed resource without a calendar has no working hours.
    by_id = {r.resource_id: r for r in calendar.resources}
    calendar_of = {
        n.resource_id: by_id.get(n.resource_id, ResourceCalendar(n.resource_id)) for n in calendar.needs
    }
    for need in calendar.needs:
        if need.is_required:
            resource = calendar_of[need.resource_id]
            if not works(resource, slot):
                reasons.add("outside_hours")
            if not has_room(resource, need.quantity, start, end, occupied_end):
                reasons.add("slot_taken")
                if need.quantity > capacity(resource):
                    reasons.add("outside_hours")  # the planner treats such a service as never bookable

    # One interchangeable candidate serves the slot: the client's choice if any, else the first in order of
    # preference, fewest minutes booked that day, id, among those on duty and free.
    candidates = [n for n in calendar.needs if not n.is_required]
    chosen = [n for n in candidates if n.resource_id in set(resource_ids)]
    if chosen:
        candidates = chosen
    serving = None
    if candidates:
        candidates.sort(
            key=lambda n: (n.preference_order, booked(calendar_of[n.resource_id], day, zone), n.resource_id)
        )
        on_duty = [n for n in candidates if works(calendar_of[n.resource_id], slot)]
        free = [
            n for n in on_duty if has_room(calendar_of[n.resource_id], n.quantity, start, end, occupied_end)
        ]
        if not on_duty:
            reasons.add("outside_hours")
        elif not free:
            reasons.add("slot_taken")
        else:
            serving = free[0].resource_id

    if reasons:
        return None, reasons
    ids = [n.resource_id for n in calendar.needs if n.is_required]
    if serving is not None:
        ids.append(serving)
    return tuple(sorted(ids)), reasons


def grid(calendar: ServiceCalendar, date_from: date, date_to: date) -> list[datetime]:
    """Every grid time of the local dates that exists on the clock, as its first UTC instant, in time order."""
    zone = ZoneInfo(calendar.timezone)
    step = timedelta(minutes=calendar.rules.slot_step_minutes)
    starts = []
    day = date_from
    while day <= date_to:
        midnight = datetime.combine(day, time())
        wall = ZERO
        while wall < ONE_DAY:
            instant = first_instant(midnight + wall, zone)
            if instant is not None:
                starts.append(instant)
            wall += step
        day += ONE_DAY
    return sorted(starts)


def oracle_slots(
    calendar: ServiceCalendar, now: datetime, date_from: date, date_to: date, resource_ids=()
) -> list[Slot]:
    length = timedelta(minutes=calendar.rules.duration_minutes)
    slots = []
    for start in grid(calendar, date_from, date_to):
        ids, _ = judge(calendar, now, start, resource_ids)
        if ids is not None:
            slots.append(Slot(start, start + length, ids))
    return slots
