"""Free slots of a service: when it can be booked and which resources would serve each slot.

Two layers:

* The pure layer (`compute_slots`, `evaluate_slot`, `nearest_slots`, `expand_block`) works on plain frozen
  dataclasses (`ServiceCalendar` and its parts) and knows nothing of the database. Every time rule lives here.
* The database layer (`find_slots`, `check_slot`, `nearest_alternatives`) loads that plain data for one
  service and one UTC window with a handful of set-based queries and hands it to the pure layer. It reads
  current rows every time (no cache): the booking calls `check_slot` inside its transaction (see
  `booking._allocate` for how concurrent bookings are serialised).

Time rules (DESIGN §4). The slot grid is local wall-clock time in the tenant's zone, anchored at local
midnight, one slot start every `slot_step_minutes`. A slot [start, start + duration) must lie inside the
service's days and hours and inside a working window of every resource that serves it, both measured on the
wall clock of the slot's local date (opening <= start < closing and end <= closing: on the night the
clocks go back, an end can read earlier than its start); it must not overlap a block of those resources; and
its occupied interval [start, start + duration + buffer) must leave room in each resource: the units of the
active allocations overlapping it plus the units the service needs must not exceed the resource's capacity
(NULL means 1). The buffer may run past closing time and over a block; it only keeps the next client away.
A local time that does not exist (spring-forward gap) gives no slot; an ambiguous one (fall-back) is offered
once, at its first occurrence. A window may close at 24:00 (see `WorkingWindow`): the instant the next local
date begins, on the nights the clocks change too (where they skip midnight, that date begins at 01:00). A shift
running past midnight is two windows (20:00-24:00, and 00:00-02:00 on the next day) and reads as one: a window
closing at 24:00 continues into the next date's window opening at 00:00 (if that date's rules have one), and
the service's hours likewise when they run to 24:00 and the service is available on the next date. Service
hours that end at or before they open run past midnight: 20:00-02:00 is the evening of each date the service
is offered and the small hours of the date after it (20:00-00:00 is 20:00-24:00). A slot
starting before midnight may end inside the continuation, its end read on the wall clock from its own date's
midnight (01:30 on the next date is 25:30); starts from midnight on belong to the next date. The continuation
is one day long at most. A slot starts after `now`, and at least `min_advance_booking_hours` after it.
Durations are real elapsed time. Intervals are half-open.

Resources (DESIGN §5). Every `service_resources` row with `is_required` is needed; the rows without it are
interchangeable candidates, one of which serves the slot: the client's choice when given, else the lowest
`preference_order`, else the candidate with the fewest booked minutes that local day, else the lowest id.
A service with no linked resources offers no slots. An inactive or deleted required resource means no slots;
inactive or deleted candidates are ignored.
"""

from __future__ import annotations

import logging
import re
import uuid
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import accumulate
from typing import Any
from zoneinfo import ZoneInfo

from dateutil.rrule import rrulestr
from sqlalchemy import (
    ARRAY,
    Boolean,
    CompoundSelect,
    Date,
    DateTime,
    Integer,
    Select,
    String,
    Text,
    Time,
    Uuid,
    bindparam,
    cast,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    union_all,
)

from core import plans
from core.config import get_settings
from core.db import UnitOfWork
from core.errors import (
    InvalidRequest,
    NotFound,
    SlotUnavailable,
    inactive_service,
    off_grid,
    resource_not_eligible,
    several_interchangeable,
    start_without_offset,
)
from core.models import (
    AppointmentResource,
    Resource,
    ResourceBlock,
    ResourceSchedule,
    Service,
    ServiceResource,
    Tenant,
)
from core.models.scheduling import end_of_day_as_midnight

log = logging.getLogger(__name__)

DEFAULT_TIMEZONE = "Europe/Madrid"  # tenants.timezone's default
ZERO = timedelta(0)
ONE_DAY = timedelta(days=1)

# Why a slot cannot be booked, as `SlotUnavailable` codes.
OUTSIDE_HOURS = "outside_hours"
SLOT_TAKEN = "slot_taken"

Interval = tuple[datetime, datetime]


# --- the public results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Slot:
    start: datetime  # aware, UTC
    end: datetime  # aware, UTC: start + duration (the buffer is not part of the client's slot)
    resource_ids: tuple[uuid.UUID, ...]  # the resources that would serve it, sorted by id

    def as_dict(self, zone: ZoneInfo) -> dict[str, Any]:
        """As the API shows a slot (an availability answer, a refusal's alternatives): in the business's zone."""
        return {
            "start": self.start.astimezone(zone).isoformat(),
            "end": self.end.astimezone(zone).isoformat(),
            "resource_ids": [str(resource_id) for resource_id in self.resource_ids],
        }


@dataclass(frozen=True)
class Availability:
    timezone: str
    service_id: uuid.UUID
    slots: list[Slot]


# --- the plain input of the pure layer -------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceRules:
    """A service's own time rules, with the column names of `services` (plus the tenant's slot step)."""

    duration_minutes: int
    buffer_time_minutes: int = 0
    # Day numbers, 0 = Sunday ... 6 = Saturday. None: every day.
    available_days: tuple[int, ...] | None = (1, 2, 3, 4, 5)
    # {"start": "HH:MM", "end": "HH:MM"}, local wall clock; "24:00" is the end of the day. None: all day.
    available_hours: Mapping[str, str] | None = field(default=None, hash=False)
    min_advance_booking_hours: int = 0
    max_advance_booking_days: int | None = None  # None: no limit
    slot_step_minutes: int = 15


@dataclass(frozen=True)
class ResourceNeed:
    """One `service_resources` row."""

    resource_id: uuid.UUID
    quantity: int = 1
    is_required: bool = True
    preference_order: int = 0


@dataclass(frozen=True)
class WorkingWindow:
    """One `resource_schedules` row: a local wall-clock window on one day of the week.

    An `end_time` of 00:00 is 24:00, the end of the day: the column stores a shift ending at midnight as
    24:00 (its CHECK wants the end after the start), which psycopg cannot load, so it is read as 00:00.
    """

    day_of_week: int  # 0 = Sunday ... 6 = Saturday
    start_time: time
    end_time: time
    effective_from: date | None = None  # inclusive; None: since always
    effective_until: date | None = None  # inclusive; None: for ever


@dataclass(frozen=True)
class ResourceCalendar:
    """What one resource has on its calendar around the window being planned."""

    resource_id: uuid.UUID
    capacity: int | None = None  # None means 1
    windows: tuple[WorkingWindow, ...] = ()
    blocks: tuple[Interval, ...] = ()  # already expanded (see `expand_block`), aware datetimes
    # Active allocations: (start, end, units), `end` including that appointment's buffer.
    allocations: tuple[tuple[datetime, datetime, int], ...] = ()


@dataclass(frozen=True)
class ServiceCalendar:
    """Everything the pure layer needs to plan one service."""

    service_id: uuid.UUID
    timezone: str  # IANA name
    rules: ServiceRules
    needs: tuple[ResourceNeed, ...]
    # A needed resource missing from here has no working hours (it is inactive, or was never scheduled).
    resources: tuple[ResourceCalendar, ...] = ()


# --- the pure layer --------------------------------------------------------------------------------------


def compute_slots(
    calendar: ServiceCalendar,
    now: datetime,
    date_from: date,
    date_to: date,
    resource_ids: Collection[uuid.UUID] = (),
) -> list[Slot]:
    """The free slots starting on the local dates date_from..date_to (both included), in time order.

    `resource_ids` restricts them to slots served by all of those resources (a client's chosen stylist);
    a resource that does not serve the service raises InvalidRequest("resource_not_eligible").
    """
    return _Planner(calendar, now, resource_ids).slots(date_from, date_to)


def evaluate_slot(
    calendar: ServiceCalendar,
    start: datetime,
    now: datetime,
    resource_ids: Collection[uuid.UUID] = (),
) -> Slot:
    """The slot starting exactly at `start`, or the precise reason it cannot be booked.

    Raises InvalidRequest ("off_grid", "repeated_time", "resource_not_eligible", "start_without_offset") for a
    request that can never be right, and SlotUnavailable ("too_soon", "too_far", "outside_hours", "slot_taken") otherwise.
    """
    return _Planner(calendar, now, resource_ids).check(start)


def nearest_slots(
    calendar: ServiceCalendar,
    start: datetime,
    now: datetime,
    count: int,
    date_from: date,
    date_to: date,
    resource_ids: Collection[uuid.UUID] = (),
    closed_months: Collection[date] = (),
) -> list[Slot]:
    """The `count` free slots of date_from..date_to closest in time to `start` (ties: the earlier one), in time
    order, none in `closed_months` (local months by their first day)."""
    slots = compute_slots(calendar, now, date_from, date_to, resource_ids)
    if closed_months:
        zone = ZoneInfo(calendar.timezone)
        slots = [slot for slot in slots if plans.month_start(slot.start, zone).date() not in closed_months]
    slots.sort(key=lambda slot: (abs(slot.start - start), slot.start))
    return sorted(slots[:count], key=lambda slot: slot.start)


_UNTIL_UTC = re.compile(r"UNTIL=(\d{8}T\d{6})Z", re.IGNORECASE)
_UNTIL_UTC_PART = re.compile(r";UNTIL=\d{8}T\d{6}Z|UNTIL=\d{8}T\d{6}Z;?", re.IGNORECASE)
_DATE_TIME = re.compile(r"(\d{8}T\d{6})(Z?)", re.IGNORECASE)  # dateutil takes any case too
_DATE = re.compile(r"\d{8}")
# RFC 5545 wants a timed block's UNTIL to be a date-time; one written as a date means through that day, which
# dateutil would read as its midnight, ending the block a day early.
_UNTIL_DATE = re.compile(r"UNTIL=(\d{8})(?![\dT])", re.IGNORECASE)
# The properties that carry date-times besides the RRULE's UNTIL (calendar exports write them in UTC).
_DATE_PROPERTIES = ("DTSTART", "EXDATE", "RDATE")


def expand_block(
    start: datetime,
    end: datetime,
    recurrence_rule: str | None,
    tz: ZoneInfo,
    window_start: datetime,
    window_end: datetime,
) -> list[Interval]:
    """The occurrences of a block that overlap [window_start, window_end), as UTC intervals.

    The first occurrence is [start, end). A recurring block repeats per its RFC 5545 RRULE on the tenant's
    wall clock (a weekly 13:00-14:00 lunch stays at 13:00 local across DST), each occurrence lasting
    end - start; EXDATE and RDATE lines may follow it. A rule that cannot be read blocks the whole window:
    better no slots than a double booking.
    """
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if not recurrence_rule:
        return [(start, end)] if start < window_end and end > window_start else []
    length = end - start
    try:
        occurrences = _occurrence_starts(start, length, recurrence_rule, tz, window_start, window_end)
    except Exception as error:  # anything a rule does to dateutil must not fail a booking
        log.error("unreadable recurrence_rule %r (%r): blocking the whole window", recurrence_rule, error)
        return [(window_start, window_end)]
    return [(s, s + length) for s in occurrences if s < window_end and s + length > window_start]


def _occurrence_starts(
    start: datetime, length: timedelta, rule: str, tz: ZoneInfo, window_start: datetime, window_end: datetime
) -> list[datetime]:
    first_local = start.astimezone(tz).replace(tzinfo=None)
    rule, until, excluded, excluded_days, added = _instants_apart(rule, tz)
    rule = _on_local_wall_clock(rule, tz)
    parts = _rrule_parts(rule)
    if not parts.get("INTERVAL", "1").isdigit() or int(parts.get("INTERVAL", "1")) < 1:
        # dateutil divides by it, or walks in place for ever (MONTHLY, YEARLY).
        raise ValueError(f"INTERVAL must be a whole number from 1: {parts['INTERVAL']!r}")
    # Wall-clock bounds are not monotonic across DST, so search a day wider and filter in UTC.
    low = (window_start - length).astimezone(tz).replace(tzinfo=None) - ONE_DAY
    high = window_end.astimezone(tz).replace(tzinfo=None) + ONE_DAY
    recurrence = rrulestr(rule, dtstart=_skip_ahead(rule, parts, first_local, low), forceset=True)
    starts = {start}  # RFC 5545: the first occurrence counts even when it does not match the rule
    for local in recurrence.between(low, high, inc=True):
        starts.add(local.replace(tzinfo=tz).astimezone(UTC))
    if until is not None:
        starts = {moment for moment in starts if moment <= until or moment == start}
    if excluded_days:
        starts = {moment for moment in starts if moment.astimezone(tz).date() not in excluded_days}
    # RFC 5545: an EXDATE may remove the first occurrence too.
    return sorted((starts | added) - excluded)


def _instants_apart(
    rule: str, tz: ZoneInfo
) -> tuple[str, datetime | None, set[datetime], set[date], set[datetime]]:
    """The rule without what it names as instants and days: a UTC UNTIL, the date-times of its EXDATE and
    RDATE lines (a floating one on the tenant's clock, at the first pass of a repeated hour, as occurrences
    are), returned in UTC, and the dates of its EXDATE lines: (rule, until, excluded, excluded_days, added).
    dateutil walks the tenant's naive wall clock, on which a UTC time in the second pass of a repeated autumn
    hour reads as the first (an UNTIL there cut that night's occurrence), and it never removes the first
    occurrence. An EXDATE date (VALUE=DATE) removes the occurrences that begin on that local day (dateutil
    would remove only one at its midnight); an RDATE date stays in the rule."""
    excluded: set[datetime] = set()
    excluded_days: set[date] = set()
    added: set[datetime] = set()
    lines = []
    for line in rule.strip().splitlines():
        head, colon, values = line.strip().partition(":")
        name, *params = head.split(";")
        if not colon or name.upper() not in ("EXDATE", "RDATE"):
            lines.append(line)
            continue
        zone = _named_zone(params) or tz
        dates = []
        for value in values.split(","):
            match = _DATE_TIME.fullmatch(value.strip())
            if match is None and name.upper() == "EXDATE" and _DATE.fullmatch(value.strip()):
                excluded_days.add(datetime.strptime(value.strip(), "%Y%m%d").date())
                continue
            if match is None:
                dates.append(value)
                continue
            moment = datetime.strptime(match[1].upper(), "%Y%m%dT%H%M%S").replace(
                tzinfo=UTC if match[2] else zone
            )
            (excluded if name.upper() == "EXDATE" else added).add(moment.astimezone(UTC))
        if dates:
            lines.append(head + ":" + ",".join(dates))
    rule = "\n".join(lines)
    until = None
    if found := _UNTIL_UTC.search(rule):
        until = datetime.strptime(found[1].upper(), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        rule = _UNTIL_UTC_PART.sub("", rule, count=1)
    return rule, until, excluded, excluded_days, added


def _on_local_wall_clock(rule: str, tz: ZoneInfo) -> str:
    """The rule with every date-time on the tenant's naive wall clock, as it is expanded: UTC values
    (`…Z`) and values with a TZID are converted; floating ones already are. An UNTIL written as a date
    becomes the last second of that local day."""
    lines = []
    for line in rule.strip().splitlines():
        head, colon, values = line.strip().partition(":")
        name, *params = head.split(";")
        if colon and name.upper() in _DATE_PROPERTIES:
            zone = _named_zone(params)
            params = [param for param in params if not param.upper().startswith("TZID=")]
            values = ",".join(_local_value(value, zone, tz) for value in values.split(","))
            line = ";".join([name, *params]) + ":" + values
        lines.append(line)
    rule = _UNTIL_UTC.sub(lambda match: "UNTIL=" + _local_value(match[0][6:], None, tz), "\n".join(lines))
    return _UNTIL_DATE.sub(lambda match: f"UNTIL={match[1]}T235959", rule)


def _named_zone(params: list[str]) -> ZoneInfo | None:
    """The zone a property's TZID parameter names, if it has one."""
    names = [param.split("=", 1)[1] for param in params if param.upper().startswith("TZID=")]
    return ZoneInfo(names[0]) if names else None


def _local_value(value: str, zone: ZoneInfo | None, tz: ZoneInfo) -> str:
    match = _DATE_TIME.fullmatch(value.strip())
    source = UTC if match and match[2] else zone
    if match is None or source is None:  # a date (VALUE=DATE), or a floating time: wall clock already
        return value
    moment = datetime.strptime(match[1].upper(), "%Y%m%dT%H%M%S").replace(tzinfo=source)
    return moment.astimezone(tz).strftime("%Y%m%dT%H%M%S")


def _rrule_parts(rule: str) -> dict[str, str]:
    """The RRULE's parts (FREQ, INTERVAL, COUNT, ...), upper-cased, from a bare rule or its RRULE line."""
    lines = rule.upper().splitlines()
    line = next((line for line in lines if line.startswith("RRULE:")), lines[0] if len(lines) == 1 else "")
    return dict(part.split("=", 1) for part in line.removeprefix("RRULE:").split(";") if "=" in part)


# Frequencies whose periods have a fixed length on the naive wall clock dateutil walks.
_FIXED_PERIODS = {
    "WEEKLY": timedelta(days=7),
    "DAILY": timedelta(days=1),
    "HOURLY": timedelta(hours=1),
    "MINUTELY": timedelta(minutes=1),
    "SECONDLY": timedelta(seconds=1),
}


def _skip_ahead(rule: str, parts: dict[str, str], first_local: datetime, low: datetime) -> datetime:
    """A later start for a rule of fixed periods without COUNT or BYSETPOS, whole periods on, before `low`.

    dateutil walks every occurrence from the start; a weekly lunch set up years ago would be walked week by
    week on every call (an hourly rule, hour by hour). Moving the start by whole periods keeps the same
    occurrences from `low` on. EXDATE and RDATE lines name instants, which a later start does not move; a
    DTSTART line would override the start given, so such a rule is walked from its own.
    """
    period = _FIXED_PERIODS.get(parts.get("FREQ", ""))
    if (
        "DTSTART" in rule.upper()
        or first_local >= low
        or period is None
        or "COUNT" in parts
        or "BYSETPOS" in parts
    ):
        return first_local
    period *= int(parts.get("INTERVAL", "1"))
    return first_local + (low - first_local) // period * period


def day_number(day: date) -> int:
    """0 = Sunday ... 6 = Saturday, as in resource_schedules.day_of_week and services.available_days."""
    return (day.weekday() + 1) % 7


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant at which the local date `day` begins (for a midnight in a gap: the gap's end)."""
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)


def _since_midnight(value: time) -> timedelta:
    return timedelta(
        hours=value.hour, minutes=value.minute, seconds=value.second, microseconds=value.microsecond
    )


def _parse_clock(text: str) -> timedelta:
    parts = [int(part) for part in str(text).split(":")]
    if not 2 <= len(parts) <= 3 or not 0 <= parts[1] < 60:
        raise ValueError(f"not a HH:MM time: {text!r}")
    offset = timedelta(hours=parts[0], minutes=parts[1], seconds=parts[2] if len(parts) == 3 else 0)
    if not ZERO <= offset <= ONE_DAY:
        raise ValueError(f"not a time of day: {text!r}")
    return offset


def _merge_touching(windows: Iterable[tuple[timedelta, timedelta]]) -> list[tuple[timedelta, timedelta]]:
    """Closed wall-clock windows merged when they overlap or touch (09-13 and 13-17 is one 09-17 shift)."""
    merged: list[list[timedelta]] = []
    for lo, hi in sorted(windows):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def _intersect(
    a: list[tuple[timedelta, timedelta]], b: list[tuple[timedelta, timedelta]]
) -> list[tuple[timedelta, timedelta]]:
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _merge_open(spans: Iterable[Interval]) -> tuple[list[datetime], list[datetime]]:
    """Open intervals (lo, hi) merged when they overlap; touching ones stay apart (their meeting point is free)."""
    los: list[datetime] = []
    his: list[datetime] = []
    for lo, hi in sorted(spans):
        if los and lo < his[-1]:
            if hi > his[-1]:
                his[-1] = hi
        else:
            los.append(lo)
            his.append(hi)
    return los, his


def _continued(
    today: list[tuple[timedelta, timedelta]], tomorrow: list[tuple[timedelta, timedelta]]
) -> list[tuple[timedelta, timedelta]]:
    """Today's windows, the one closing at 24:00 running on into tomorrow's window opening at 00:00.

    Tomorrow's closing is read from today's midnight (02:00 is 26:00). One day of continuation is enough (a
    night shift runs into the next morning, not on through another night): tomorrow's window is not carried
    on into the day after, so no slot ends after tomorrow's 24:00.
    """
    if today and tomorrow and today[-1][1] == ONE_DAY and tomorrow[0][0] == ZERO:
        return [*today[:-1], (today[-1][0], ONE_DAY + tomorrow[0][1])]
    return today


def _inside(windows: list[tuple[timedelta, timedelta]], lo: timedelta, hi: timedelta) -> bool:
    # The start is checked against the closing time too: on the night the clocks go back, a slot's end can
    # read earlier on the wall clock than its start (02:30 summer time + 30 minutes is 02:00 winter time).
    return any(w_lo <= lo < w_hi and hi <= w_hi for w_lo, w_hi in windows)


class _Forbidden:
    """Slot starts that a set of busy intervals rules out, as merged open intervals: one bisect per question.

    A slot starting at s with length L overlaps a busy [a, b) exactly when a - L < s < b.
    """

    __slots__ = ("los", "his")

    def __init__(self, spans: Iterable[Interval]):
        self.los, self.his = _merge_open(spans)

    def __contains__(self, start: datetime) -> bool:
        i = bisect_left(self.los, start) - 1
        return i >= 0 and start < self.his[i]

    def until(self, start: datetime) -> datetime | None:
        """The first instant after `start` that is allowed again, or None when `start` is allowed."""
        i = bisect_left(self.los, start) - 1
        return self.his[i] if i >= 0 and start < self.his[i] else None


def _units_in_use(allocations: Iterable[tuple[datetime, datetime, int]]) -> tuple[list[datetime], list[int]]:
    """The units held by the half-open allocations as steps: `units[k]` are in use from `instants[k]` until
    `instants[k + 1]` (the last step, 0, for ever; none before the first)."""
    change: dict[datetime, int] = defaultdict(int)
    for start, end, units in allocations:
        change[start] += units
        change[end] -= units
    instants = sorted(change)
    return instants, list(accumulate(change[instant] for instant in instants))


class _Resource:
    """One needed resource's calendar, arranged so that each slot question costs a few bisects."""

    def __init__(
        self, need: ResourceNeed, calendar: ResourceCalendar, length: timedelta, occupied: timedelta
    ):
        self.id = need.resource_id
        self.need = need
        capacity = 1 if calendar.capacity is None else calendar.capacity
        self.impossible = need.quantity > capacity
        self.headroom = capacity - need.quantity  # units other appointments may hold while this one runs
        # Wall-clock windows as offsets from midnight, converted once: (day, from, until, start, end).
        self.windows = [
            (
                w.day_of_week,
                w.effective_from,
                w.effective_until,
                _since_midnight(w.start_time),
                _since_midnight(w.end_time) or ONE_DAY,  # no window ends at 00:00: that is 24:00
            )
            for w in calendar.windows
        ]
        self._windows_on: dict[date, list[tuple[timedelta, timedelta]]] = {}
        self._continued_on: dict[date, list[tuple[timedelta, timedelta]]] = {}
        # Everything in UTC: comparing datetimes of different tzinfo objects costs a utcoffset() call each.
        allocations = sorted(
            (s.astimezone(UTC), e.astimezone(UTC), u) for s, e, u in calendar.allocations if u > 0
        )
        self.block_spans = [(a.astimezone(UTC) - length, b.astimezone(UTC)) for a, b in calendar.blocks]
        if self.headroom <= 0:
            # Exclusive for this service: any overlapping allocation rules the slot out.
            self.alloc_spans = [(a - occupied, b) for a, b, _ in allocations]
            self.counting = False
        else:
            # Shared: the units in use as a step function of time, so that a slot asks for the most in use
            # at any instant it occupies. Two allocations that follow each other never hold units together,
            # so a slot overlapping both is not refused for their sum.
            self.alloc_spans = []
            self.counting = True
            self._steps, self._in_use = _units_in_use(allocations)
        self.forbidden = _Forbidden(self.block_spans + self.alloc_spans)
        # For "least booked that day": allocation starts and the running total of booked time.
        self._booked_starts = [s for s, _, _ in allocations]
        self._booked_total = [ZERO, *accumulate(e - s for s, e, _ in allocations)]

    def windows_on(self, day: date) -> list[tuple[timedelta, timedelta]]:
        windows = self._windows_on.get(day)
        if windows is None:
            weekday = day_number(day)
            windows = _merge_touching(
                (start, end)
                for day_of_week, effective_from, effective_until, start, end in self.windows
                if day_of_week == weekday
                and (effective_from is None or effective_from <= day)
                and (effective_until is None or day <= effective_until)
            )
            self._windows_on[day] = windows
        return windows

    def continued_on(self, day: date) -> list[tuple[timedelta, timedelta]]:
        """The day's windows with the one closing at 24:00 continued into the next day (see `_continued`)."""
        windows = self._continued_on.get(day)
        if windows is None:
            windows = _continued(self.windows_on(day), self.windows_on(day + ONE_DAY))
            self._continued_on[day] = windows
        return windows

    def has_room(self, start: datetime, occupied_end: datetime) -> bool:
        """Capacity for shared resources; exclusive ones are answered by `forbidden`."""
        if not self.counting:
            return True
        # The steps in force from `start` up to `occupied_end`: the last one at or before `start`, then
        # every one before `occupied_end`.
        first = max(bisect_right(self._steps, start) - 1, 0)
        last = bisect_left(self._steps, occupied_end)
        return all(units <= self.headroom for units in self._in_use[first:last])

    def free(self, start: datetime, occupied_end: datetime) -> bool:
        return not self.impossible and start not in self.forbidden and self.has_room(start, occupied_end)

    def booked_between(self, lo: datetime, hi: datetime) -> timedelta:
        """Booked time of the allocations starting in [lo, hi)."""
        i, j = bisect_left(self._booked_starts, lo), bisect_left(self._booked_starts, hi)
        return self._booked_total[j] - self._booked_total[i]


class _Day:
    """One local date: its midnight, the instant it ends, and its UTC offset when that does not change within
    reach of a slot."""

    __slots__ = ("day", "midnight", "ends", "utc_midnight")

    def __init__(self, day: date, tz: ZoneInfo, length: timedelta):
        self.day = day
        self.midnight = datetime.combine(day, time())
        self.ends = local_midnight(day + ONE_DAY, tz)
        offsets = {(self.midnight + k * ONE_DAY).replace(tzinfo=tz).utcoffset() for k in range(3)}
        # With one offset from this midnight to two days later, wall clock and UTC differ by a constant for
        # every slot of the day; otherwise (a DST change, or a slot longer than a day) convert each time.
        self.utc_midnight = None
        if len(offsets) == 1 and length < ONE_DAY:
            self.utc_midnight = (self.midnight - offsets.pop()).replace(tzinfo=UTC)


class _Planner:
    def __init__(self, calendar: ServiceCalendar, now: datetime, resource_ids: Collection[uuid.UUID] = ()):
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime")
        now = now.astimezone(UTC)
        rules = calendar.rules
        self.calendar = calendar
        self.tz = ZoneInfo(calendar.timezone)
        self.length = timedelta(minutes=rules.duration_minutes)
        self.buffer = timedelta(minutes=rules.buffer_time_minutes or 0)
        occupied = self.length + self.buffer
        step = rules.slot_step_minutes
        if not isinstance(step, int) or not 0 < step <= 1440:
            raise ValueError(f"slot_step_minutes must be 1..1440, not {step!r}")
        self.step = timedelta(minutes=step)
        self.days = None if rules.available_days is None else frozenset(int(d) for d in rules.available_days)
        hours = rules.available_hours
        opens, closes = (
            (_parse_clock(hours["start"]), _parse_clock(hours["end"])) if hours else (ZERO, ONE_DAY)
        )
        # Hours ending at or before they open run past midnight (18:00-02:00; 18:00-00:00 is 18:00-24:00):
        # the evening of each day the service is offered, and the small hours of the day after.
        self.hours = [(opens, closes if closes > opens else ONE_DAY)]
        self.small_hours = [(ZERO, closes)] if ZERO < closes <= opens else []
        # Strictly after now, even without notice: a slot starting at this instant is past by the time anybody
        # books it, and the booking refuses it (start_in_past).
        self.earliest = max(
            now + timedelta(microseconds=1), now + timedelta(hours=rules.min_advance_booking_hours or 0)
        )
        max_days = rules.max_advance_booking_days
        self.latest = None if max_days is None else now + timedelta(days=max_days)

        by_id = {resource.resource_id: resource for resource in calendar.resources}
        resources = [
            _Resource(
                need, by_id.get(need.resource_id) or ResourceCalendar(need.resource_id), self.length, occupied
            )
            for need in calendar.needs
        ]
        self.required = [r for r in resources if r.need.is_required]
        candidates = {r.id: r for r in resources if not r.need.is_required}

        wanted = set(resource_ids or ())
        eligible = {r.id for r in resources}
        unknown = sorted(wanted - eligible)
        if unknown:
            # Named as the availability query's parameter: a booking checks its resource_ids before this.
            raise resource_not_eligible(unknown[0], field="resource_id")
        chosen = sorted(wanted & candidates.keys())
        if len(chosen) > 1:
            raise several_interchangeable()
        # A client's choice among the candidates is the only candidate considered.
        self.candidates = [candidates[chosen[0]]] if chosen else list(candidates.values())
        self.bookable = bool(resources) and not any(r.impossible for r in self.required)

        # The required resources are asked once per slot: their exclusive calendars fold into one lookup.
        self.required_forbidden = _Forbidden(
            span for r in self.required for span in (r.block_spans + r.alloc_spans)
        )
        self.required_counting = [r for r in self.required if r.counting]
        self.required_ids = tuple(sorted(r.id for r in self.required))
        self._ids_with = {c.id: tuple(sorted((*self.required_ids, c.id))) for c in self.candidates}
        self._days: dict[date, _Day] = {}
        self._order: dict[date, list[_Resource]] = {}
        self._own_opening: dict[date, list[tuple[timedelta, timedelta]]] = {}
        self._openings: dict[date, list[tuple[timedelta, timedelta]]] = {}

    # -- one day at a time --

    def _day(self, day: date) -> _Day:
        found = self._days.get(day)
        if found is None:
            found = self._days[day] = _Day(day, self.tz, self.length)
        return found

    def _opening(self, day: date) -> list[tuple[timedelta, timedelta]]:
        """The wall-clock windows in which the service and every required resource are open for slots starting
        that day: the day's own, the one closing at 24:00 continued into the next day's (see `_continued`).

        Intersecting first and continuing after is the same as continuing each part (the service's hours,
        every resource's windows) and intersecting: the parts all close at 24:00 today and all open at 00:00
        tomorrow exactly when their intersections do.
        """
        windows = self._openings.get(day)
        if windows is None:
            windows = _continued(self._own_opening_on(day), self._own_opening_on(day + ONE_DAY))
            self._openings[day] = windows
        return windows

    def _own_opening_on(self, day: date) -> list[tuple[timedelta, timedelta]]:
        windows = self._own_opening.get(day)
        if windows is None:
            windows = []
            if self.small_hours and self._offered(day - ONE_DAY):
                windows = self.small_hours  # the night before runs on into this date
            if self._offered(day):
                windows = _merge_touching([*windows, *self.hours])
            for resource in self.required:
                if not windows:
                    break
                windows = _intersect(windows, resource.windows_on(day))
            self._own_opening[day] = windows
        return windows

    def _offered(self, day: date) -> bool:
        return self.days is None or day_number(day) in self.days

    def _candidates_on(self, day: date) -> list[_Resource]:
        order = self._order.get(day)
        if order is None:
            if len(self.candidates) > 1:
                lo, hi = local_midnight(day, self.tz), local_midnight(day + ONE_DAY, self.tz)
                order = sorted(
                    self.candidates,
                    key=lambda r: (r.need.preference_order, r.booked_between(lo, hi), r.id),
                )
            else:
                order = self.candidates
            self._order[day] = order
        return order

    def _wall_to_utc(self, day: _Day, wall: timedelta) -> tuple[datetime, timedelta] | None:
        """UTC start and wall-clock end (from the day's midnight) of a slot starting at `wall`; None in a gap."""
        if day.utc_midnight is not None:
            return day.utc_midnight + wall, wall + self.length
        local = day.midnight + wall
        start = local.replace(tzinfo=self.tz).astimezone(UTC)  # fold=0: the first occurrence
        if start.astimezone(self.tz).replace(tzinfo=None) != local:
            return None  # the clock jumped over this time
        end = start + self.length
        if end == day.ends:
            # 24:00, also where the clocks skip the next midnight (its wall clock then shows 01:00).
            return start, ONE_DAY
        if end > day.ends and end == self._day(day.day + ONE_DAY).ends:
            # The same for the next day's 24:00, where a continued window may close.
            return start, 2 * ONE_DAY
        end_local = end.astimezone(self.tz).replace(tzinfo=None)
        return start, end_local - day.midnight

    def _serve(
        self, day: date, wall: timedelta, end_wall: timedelta, start: datetime
    ) -> tuple[tuple[uuid.UUID, ...] | None, str]:
        """The resources serving this slot, or None and why not (the opening hours are checked by the caller)."""
        occupied_end = start + self.length + self.buffer
        if start in self.required_forbidden:
            return None, SLOT_TAKEN
        for resource in self.required_counting:
            if not resource.has_room(start, occupied_end):
                return None, SLOT_TAKEN
        if not self.candidates:
            return self.required_ids, ""
        reason = OUTSIDE_HOURS
        for candidate in self._candidates_on(day):
            if not _inside(candidate.continued_on(day), wall, end_wall):
                continue
            if candidate.free(start, occupied_end):
                return self._ids_with[candidate.id], ""
            reason = SLOT_TAKEN
        return None, reason

    def slots(self, date_from: date, date_to: date) -> list[Slot]:
        found: list[Slot] = []
        if not self.bookable:
            return found
        step, earliest, latest = self.step, self.earliest, self.latest
        day = date_from
        while day <= date_to:
            clock = self._day(day)
            for open_at, close_at in self._opening(day):
                wall = -((-open_at) // step) * step  # the first grid time at or after opening
                # A continued window may close the next day, but starts from midnight on are the next day's.
                last_start = min(close_at, ONE_DAY)
                while wall < last_start:
                    converted = self._wall_to_utc(clock, wall)
                    if converted is not None:
                        start, end_wall = converted
                        if latest is not None and start > latest:
                            return found  # the grid runs forward in time: nothing later qualifies
                        busy_until = self.required_forbidden.until(start)
                        if busy_until is not None and clock.utc_midnight is not None:
                            # Jump over the busy stretch to the first grid time after it (any day without
                            # a clock change, where grid and UTC move together).
                            wall = max(wall + step, -((clock.utc_midnight - busy_until) // step) * step)
                            continue
                        if busy_until is None and start >= earliest and end_wall <= close_at:
                            ids, _ = self._serve(day, wall, end_wall, start)
                            if ids is not None:
                                found.append(Slot(start, start + self.length, ids))
                    wall += step
            day += ONE_DAY
        return found

    def check(self, start: datetime) -> Slot:
        if start.tzinfo is None:
            raise start_without_offset()
        start = start.astimezone(UTC)
        local = start.astimezone(self.tz)
        clock = self._day(local.date())
        wall = local.replace(tzinfo=None) - clock.midnight
        converted = self._wall_to_utc(clock, wall)
        if wall % self.step or converted is None:
            raise off_grid(f"{local:%H:%M}", self.step.seconds // 60)
        if converted[0] != start:
            # A fall-back hour is offered once, the first time round: one booking per wall-clock time.
            raise InvalidRequest(
                f"{local:%H:%M} happens twice on {local:%Y-%m-%d} (the clocks go back); only the first"
                f" {local:%H:%M} can be booked, {converted[0].astimezone(self.tz).isoformat()}.",
                code="repeated_time",
            )
        if start < self.earliest:
            raise SlotUnavailable("That time is too soon to book.", code="too_soon")
        if self.latest is not None and start > self.latest:
            raise SlotUnavailable("That time is too far ahead to book.", code="too_far")
        end_wall = converted[1]
        if not self.bookable or not _inside(self._opening(clock.day), wall, end_wall):
            raise SlotUnavailable("The service is not offered at that time.", code=OUTSIDE_HOURS)
        ids, reason = self._serve(clock.day, wall, end_wall, start)
        if ids is None:
            if reason == OUTSIDE_HOURS:
                raise SlotUnavailable("Nobody who provides the service works at that time.", code=reason)
            raise SlotUnavailable("That time is already taken.", code=reason)
        return Slot(start, start + self.length, ids)


# --- the database layer ----------------------------------------------------------------------------------
# A handful of set-based queries per call, one per kind of data and all resources at once; the pure layer
# above does the rest. Nothing is cached: check_slot runs inside the booking transaction.


@dataclass(frozen=True)
class _Context:
    service_id: uuid.UUID
    tenant_id: uuid.UUID
    tz: ZoneInfo
    rules: ServiceRules
    tenant_name: str
    subscription_status: str
    # The plan's monthly allowance (plans.allowance); read only when the service is given by id.
    monthly_limit: int | None = None


def slot_step_minutes(tenant_settings: dict[str, Any] | None) -> int:
    """The tenant's slot grid in minutes: its setting when that is a sensible whole number, else the default."""
    step = (tenant_settings or {}).get("slot_step_minutes")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 < step <= 1440:
        step = get_settings().default_slot_step_minutes
    return step


@dataclass(frozen=True)
class CalendarWindow:
    """The rows `find_slots` plans from: the calendar of the local dates first..last (those a slot could
    still be booked on)."""

    calendar: ServiceCalendar
    first: date
    last: date
    resource_id: uuid.UUID | None = None  # the client's choice, if any: the only one of the stylists read
    # Local months (by their first day) that hold all the appointments the plan allows: nothing is offered.
    full_months: frozenset[date] = frozenset()


def find_slots(
    uow: UnitOfWork,
    service_id: uuid.UUID,
    date_from: date,
    date_to: date,
    now: datetime,
    resource_id: uuid.UUID | None = None,
) -> Availability:
    """The free slots of a service starting on the local dates date_from..date_to (both included).

    `resource_id` keeps only the slots that resource would serve (the client's chosen stylist).
    """
    return plan_window(read_window(uow, service_id, date_from, date_to, now, resource_id), now)


def check_date_range(date_from: date, date_to: date) -> None:
    """A range of local dates, both included, that one request may ask about."""
    if date_to < date_from:
        raise InvalidRequest("The range ends before it starts.", code="invalid_range")
    limit = get_settings().max_availability_days
    if (date_to - date_from).days + 1 > limit:
        raise InvalidRequest(f"Ask for at most {limit} days at a time.", code="range_too_long")


def read_window(
    uow: UnitOfWork,
    service_id: uuid.UUID,
    date_from: date,
    date_to: date,
    now: datetime,
    resource_id: uuid.UUID | None = None,
) -> CalendarWindow:
    """The reading half of `find_slots`: a caller that plans after giving its connection back (the API)
    calls the two halves itself."""
    check_date_range(date_from, date_to)
    context = _context(uow, service_id)
    # What is offered is what a booking would accept: nothing while the business cannot book, nothing in a
    # month its plan has filled.
    plans.check_bookable(context.tenant_name, context.subscription_status)
    rules, tz = context.rules, context.tz
    # Only the dates on which a slot could still be booked are loaded.
    first = max(date_from, (now + timedelta(hours=rules.min_advance_booking_hours)).astimezone(tz).date())
    last = date_to
    if rules.max_advance_booking_days is not None:
        last = min(date_to, (now + timedelta(days=rules.max_advance_booking_days)).astimezone(tz).date())
    full_months: frozenset[date] = frozenset()
    if context.monthly_limit is not None and first <= last:
        full_months = frozenset(
            plans.full_months(uow, context.tenant_id, tz, context.monthly_limit, first, last)
        )
    chosen = (resource_id,) if resource_id else ()
    return CalendarWindow(_load(uow, context, first, last, chosen), first, last, resource_id, full_months)


def plan_window(window: CalendarWindow, now: datetime) -> Availability:
    """The planning half of `find_slots`: no database."""
    calendar = window.calendar
    chosen = (window.resource_id,) if window.resource_id else ()
    slots = compute_slots(calendar, now, window.first, window.last, chosen)
    if window.full_months:
        zone = ZoneInfo(calendar.timezone)
        slots = [
            slot for slot in slots if plans.month_start(slot.start, zone).date() not in window.full_months
        ]
    return Availability(timezone=calendar.timezone, service_id=calendar.service_id, slots=slots)


def check_slot(
    uow: UnitOfWork,
    service: Service | uuid.UUID,
    start: datetime,
    now: datetime,
    resource_ids: Sequence[uuid.UUID] | None = None,
) -> Slot:
    """The slot starting exactly at `start`, served by the client's choice when given, read from current rows.

    Raises InvalidRequest ("off_grid", "resource_not_eligible", "start_without_offset") or SlotUnavailable
    ("too_soon", "too_far", "outside_hours", "slot_taken"); see `evaluate_slot`.
    """
    context = _context(uow, service)
    if start.tzinfo is None:
        raise start_without_offset()
    day = start.astimezone(context.tz).date()
    return evaluate_slot(_load(uow, context, day, day, resource_ids or ()), start, now, resource_ids or ())


def nearest_alternatives(
    uow: UnitOfWork,
    service: Service | uuid.UUID,
    start: datetime,
    now: datetime,
    count: int = 3,
    resource_ids: Sequence[uuid.UUID] | None = None,
    *,
    closed_months: Callable[[date, date], Collection[date]] = lambda first, last: (),
) -> list[Slot]:
    """The `count` free slots closest in time to `start`, before or after it, in time order.

    Never in the past or too soon, nor in the months `closed_months(first, last)` gives for the local dates
    searched (local months by their first day: those the plan has filled); no further ahead than
    max_advance_booking_days (or the longest range find_slots serves, for a service without that limit), nor
    more than ALTERNATIVES_WITHIN from `start`, or from the edge of the bookable dates when `start` lies beyond
    it (too far ahead, too soon): the nearest slots are there.
    The search widens outward from `start`'s day, so the usual case loads a couple of days only.
    """
    context = _context(uow, service)
    rules, tz = context.rules, context.tz
    horizon = rules.max_advance_booking_days
    if horizon is None:
        horizon = get_settings().max_availability_days
    earliest = (now + timedelta(hours=rules.min_advance_booking_hours)).astimezone(tz).date()
    latest = (now + timedelta(days=horizon)).astimezone(tz).date()
    if count <= 0 or earliest > latest:
        return []
    anchor = min(max(start.astimezone(tz).date(), earliest), latest)
    first, last = max(earliest, anchor - ALTERNATIVES_WITHIN), min(latest, anchor + ALTERNATIVES_WITHIN)
    closed = closed_months(first, last)
    radius = 1
    while True:
        low, high = max(first, anchor - radius * ONE_DAY), min(last, anchor + radius * ONE_DAY)
        calendar = _load(uow, context, low, high, resource_ids or ())
        found = nearest_slots(calendar, start, now, count, low, high, resource_ids or (), closed)
        if low == first and high == last:
            return found
        if len(found) == count:
            # Whatever lies outside the dates searched is at least this far from `start`.
            unsearched = min(
                start - local_midnight(low, tz) if low > first else timedelta.max,
                local_midnight(high + ONE_DAY, tz) - start if high < last else timedelta.max,
            )
            if max(abs(slot.start - start) for slot in found) <= unsearched:
                return found
        radius *= 4


# How far from the time asked for a refusal looks for alternatives. A refused booking looks inside its
# transaction (and a shared room's locks): over a fully booked year with forty stylists the search took
# seconds. A caller offered nothing within a month asks for another month.
ALTERNATIVES_WITHIN = timedelta(days=31)

# What the planner needs of a service and its tenant; read as plain columns, not as ORM objects.
_SERVICE_COLUMNS = (
    Service.id,
    Service.name,
    Service.tenant_id,
    Service.is_active,
    Service.deleted_at,
    Service.duration_minutes,
    Service.buffer_time_minutes,
    Service.available_days,
    Service.available_hours,
    Service.min_advance_booking_hours,
    Service.max_advance_booking_days,
    Tenant.timezone,
    Tenant.settings,
    Tenant.name.label("tenant_name"),
    Tenant.subscription_status,
    plans.plan_limit_of(Service.tenant_id).scalar_subquery().label("plan_limit"),
)
# Built once: building the select and its cache key on every call cost more Python than the query's round trip.
_SERVICE_CONTEXT = (
    select(*_SERVICE_COLUMNS)
    .join(Tenant, Tenant.id == Service.tenant_id)
    .where(Service.id == bindparam("service_id", type_=Uuid))
)


def _context(uow: UnitOfWork, service: Service | uuid.UUID) -> _Context:
    """The service's rules in its tenant's zone; NotFound("service_not_found") for a service that is not
    this tenant's or is deleted, InvalidRequest("service_inactive") for one switched off. Given a row (the
    booking has one), its tenant is usually in the session already; given an id, service and tenant come
    in one query."""
    if isinstance(service, Service):
        row: Any = service
        # Under row-level security another tenant's row is invisible: no tenant is no service.
        tenant = uow.session.get(Tenant, service.tenant_id)
        if tenant is None:
            raise NotFound(f"Service {service.id} does not exist", code="service_not_found")
        timezone, tenant_settings = tenant.timezone, tenant.settings
        tenant_name, subscription_status, limit = tenant.name, tenant.subscription_status, None
    else:
        missing = NotFound(f"Service {service} does not exist", code="service_not_found")
        try:
            key = uuid.UUID(str(service))
        except ValueError:
            raise missing from None
        row = uow.session.execute(_SERVICE_CONTEXT, {"service_id": key}).first()
        if row is None:
            raise missing
        timezone, tenant_settings = row.timezone, row.settings
        tenant_name, subscription_status = row.tenant_name, row.subscription_status
        limit = plans.allowance(row.plan_limit)
    elsewhere = uow.tenant_id is not None and row.tenant_id != uow.tenant_id
    if elsewhere or row.deleted_at is not None:
        raise NotFound(f"Service {row.id} does not exist", code="service_not_found")
    if row.is_active is False:
        raise inactive_service(row.name)

    step = slot_step_minutes(tenant_settings)
    days = row.available_days
    rules = ServiceRules(
        duration_minutes=row.duration_minutes,
        buffer_time_minutes=row.buffer_time_minutes or 0,
        available_days=None if days is None else tuple(int(day) for day in days),
        available_hours=row.available_hours or None,
        min_advance_booking_hours=row.min_advance_booking_hours or 0,
        max_advance_booking_days=row.max_advance_booking_days,
        slot_step_minutes=step,
    )
    zone = ZoneInfo(timezone or DEFAULT_TIMEZONE)
    return _Context(row.id, row.tenant_id, zone, rules, tenant_name, subscription_status, limit)


# The calendar of a service is read in one statement, one round trip: its resource rows, then the
# schedules, blocks and active allocations of its usable resources around the window. The parts share one
# column list; each fills the columns it needs and leaves the others NULL:
#   need   resource_id, number_1 quantity, number_2 preference_order, number_3 capacity, flag is_required,
#          flag_2 usable (active, not deleted, of the service's tenant)
#   window resource_id, number_1 day_of_week, clock_1/clock_2 start/end time, day_1/day_2 effective from/until
#   block  resource_id, instant_1/instant_2 start/end, rule recurrence_rule
#   busy   resource_id, instant_1/instant_2 lower/upper(allocated_during), number_1 units
_CALENDAR_COLUMNS = {
    "resource_id": Uuid(),
    "number_1": Integer(),
    "number_2": Integer(),
    "number_3": Integer(),
    "flag": Boolean(),
    "flag_2": Boolean(),
    "instant_1": DateTime(timezone=True),
    "instant_2": DateTime(timezone=True),
    "clock_1": Time(),
    "clock_2": Time(),
    "day_1": Date(),
    "day_2": Date(),
    "rule": Text(),
}


def _part(kind: str, **values: Any) -> Select:
    columns = [literal(kind, String()).label("kind")]
    for name, type_ in _CALENDAR_COLUMNS.items():
        columns.append((values[name] if name in values else cast(null(), type_)).label(name))
    return select(*columns)


def _calendar_statement() -> CompoundSelect:
    """Built once; its parameters are service_id, tenant_id, window_start, window_end, first, last and chosen.

    The schedules are read for first..last and the day after: a window closing at 24:00 on `last` continues
    into it. [window_start, window_end) must reach the end of the last slot's occupied time, past last's
    midnight (see `_load`). When `chosen` names one of the interchangeable resources (the client's stylist),
    the calendars of the others are not read: the planner considers the chosen one only.
    """
    service_id = bindparam("service_id", type_=Uuid())
    tenant_id = bindparam("tenant_id", type_=Uuid())
    window_start = bindparam("window_start", type_=DateTime(timezone=True))
    window_end = bindparam("window_end", type_=DateTime(timezone=True))
    first, last = bindparam("first", type_=Date()), bindparam("last", type_=Date())
    chosen = bindparam("chosen", type_=ARRAY(Uuid()))
    is_chosen = ServiceResource.resource_id == func.any(chosen)
    linked = (
        select(
            ServiceResource.resource_id,
            ServiceResource.quantity_required,
            ServiceResource.preference_order,
            ServiceResource.is_required,
            Resource.capacity,
            (Resource.is_active & Resource.deleted_at.is_(None) & (Resource.tenant_id == tenant_id)).label(
                "usable"
            ),
            (
                ServiceResource.is_required
                | is_chosen
                | ~func.coalesce(func.bool_or(~ServiceResource.is_required & is_chosen).over(), False)
            ).label("planned"),
        )
        .join(Resource, Resource.id == ServiceResource.resource_id)
        .where(ServiceResource.service_id == service_id)
        .cte("linked")
        .prefix_with("MATERIALIZED")
    )
    read = linked.c.usable & linked.c.planned
    needs = _part(
        "need",
        resource_id=linked.c.resource_id,
        number_1=linked.c.quantity_required,
        number_2=linked.c.preference_order,
        number_3=linked.c.capacity,
        flag=linked.c.is_required,
        flag_2=linked.c.usable,
    ).select_from(linked)

    windows = (
        _part(
            "window",
            resource_id=ResourceSchedule.resource_id,
            number_1=ResourceSchedule.day_of_week,
            clock_1=ResourceSchedule.start_time,
            # 24:00 read as 00:00 (`ClosingTime`), by hand: a union's column takes its type from one part.
            clock_2=end_of_day_as_midnight(ResourceSchedule.end_time),
            day_1=ResourceSchedule.effective_from,
            day_2=ResourceSchedule.effective_until,
        )
        .join_from(linked, ResourceSchedule, ResourceSchedule.resource_id == linked.c.resource_id)
        .where(
            read,
            ResourceSchedule.is_active,
            or_(
                ResourceSchedule.effective_from.is_(None),
                ResourceSchedule.effective_from <= last + literal_column("1", Integer()),
            ),
            or_(ResourceSchedule.effective_until.is_(None), ResourceSchedule.effective_until >= first),
        )
    )
    blocks = (
        _part(
            "block",
            resource_id=ResourceBlock.resource_id,
            instant_1=ResourceBlock.start_datetime,
            instant_2=ResourceBlock.end_datetime,
            rule=ResourceBlock.recurrence_rule,
        )
        .join_from(linked, ResourceBlock, ResourceBlock.resource_id == linked.c.resource_id)
        .where(
            read,
            ResourceBlock.deleted_at.is_(None),
            ResourceBlock.start_datetime < window_end,
            or_(ResourceBlock.end_datetime > window_start, ResourceBlock.recurrence_rule.is_not(None)),
        )
    )
    during = AppointmentResource.allocated_during
    busy = (
        _part(
            "busy",
            resource_id=AppointmentResource.resource_id,
            instant_1=func.lower(during),
            instant_2=func.upper(during),
            number_1=AppointmentResource.units,
        )
        .join_from(linked, AppointmentResource, AppointmentResource.resource_id == linked.c.resource_id)
        .where(
            read,
            # A plain boolean test, so that the partial index's predicate (WHERE active) is seen to hold.
            AppointmentResource.active,
            # Under row-level security only leakproof comparisons can drive an index scan, and the range
            # operator && is not one: plain timestamp bounds let the btree on (resource_id, occupied_until)
            # read only what is still running at the window, && then filters. See docs/performance.md.
            AppointmentResource.occupied_until > window_start,
            AppointmentResource.allocated_start < window_end,
            during.op("&&")(func.tstzrange(window_start, window_end, "[)")),
        )
    )
    return union_all(needs, windows, blocks, busy)


_CALENDAR = _calendar_statement()


def _load(
    uow: UnitOfWork, context: _Context, first: date, last: date, chosen: Collection[uuid.UUID] = ()
) -> ServiceCalendar:
    """The plain calendar of the service for slots starting on the local dates first..last; with the client's
    choice of an interchangeable resource, without the calendars of the others."""
    tz, rules = context.tz, context.rules
    window_start = local_midnight(first, tz)
    window_end = window_start
    if first <= last:
        reach = timedelta(minutes=rules.duration_minutes + rules.buffer_time_minutes)
        window_end = local_midnight(last + ONE_DAY, tz) + reach

    needs: list[ResourceNeed] = []
    capacities: dict[uuid.UUID, int | None] = {}
    windows: dict[uuid.UUID, list[WorkingWindow]] = defaultdict(list)
    blocks: dict[uuid.UUID, list[Interval]] = defaultdict(list)
    busy: dict[uuid.UUID, list[tuple[datetime, datetime, int]]] = defaultdict(list)
    parameters = {
        "service_id": context.service_id,
        "tenant_id": context.tenant_id,
        "window_start": window_start,
        "window_end": window_end,
        "first": first,
        "last": last,
        "chosen": list(chosen),
    }
    rows = uow.session.execute(_CALENDAR, parameters).all()
    # Unpacked by position (the order of _CALENDAR_COLUMNS): a few hundred rows, read as fast as they come.
    for kind, resource_id, number_1, number_2, number_3, flag, flag_2, instant_1, instant_2, *rest in rows:
        if kind == "busy":
            busy[resource_id].append((instant_1, instant_2, number_1))
        elif kind == "window":
            clock_1, clock_2, day_1, day_2, _ = rest
            windows[resource_id].append(WorkingWindow(number_1, clock_1, clock_2, day_1, day_2))
        elif kind == "block":
            if first <= last:
                blocks[resource_id].extend(
                    expand_block(instant_1, instant_2, rest[-1], tz, window_start, window_end)
                )
        elif flag_2 or flag is not False:
            # An unusable required resource stays, without a calendar: it never works, so nothing is offered.
            needs.append(
                ResourceNeed(
                    resource_id=resource_id,
                    quantity=number_1 or 1,
                    is_required=flag is not False,
                    preference_order=number_2 or 0,
                )
            )
            if flag_2:
                capacities[resource_id] = number_3
    resources = tuple(
        ResourceCalendar(
            resource_id,
            capacity=capacity,
            windows=tuple(windows[resource_id]),
            blocks=tuple(blocks[resource_id]),
            allocations=tuple(busy[resource_id]),
        )
        for resource_id, capacity in capacities.items()
    )
    return ServiceCalendar(context.service_id, tz.key, rules, tuple(needs), resources)
