"""The lock keys that serialise the counting of shared resources: any two bookings whose occupied
intervals overlap on a resource must share at least one key, whatever the time zone and the buffers."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from core.booking import resource_day_keys

ROOM = uuid.UUID("00000000-0000-4000-8000-000000000001")
CHAIR = uuid.UUID("00000000-0000-4000-8000-000000000002")


def test_a_slot_within_one_utc_day_has_one_key_per_resource_in_sorted_order():
    start = datetime(2027, 3, 3, 10, 0, tzinfo=UTC)
    keys = resource_day_keys([CHAIR, ROOM], start, start + timedelta(minutes=55))
    assert keys == [f"{ROOM}:2027-03-03", f"{CHAIR}:2027-03-03"]


def test_a_slot_ending_at_utc_midnight_does_not_touch_the_next_day():
    start = datetime(2027, 3, 3, 23, 0, tzinfo=UTC)
    assert resource_day_keys([ROOM], start, start + timedelta(hours=1)) == [f"{ROOM}:2027-03-03"]


def test_a_slot_crossing_utc_midnight_takes_both_days():
    start = datetime(2027, 3, 3, 23, 30, tzinfo=UTC)
    keys = resource_day_keys([ROOM], start, start + timedelta(hours=1))
    assert keys == [f"{ROOM}:2027-03-03", f"{ROOM}:2027-03-04"]


def test_the_days_are_utc_days_whatever_the_business_zone():
    # 09:00 on 4 March in Auckland is 20:00 on 3 March in UTC.
    start = datetime(2027, 3, 4, 9, 0, tzinfo=ZoneInfo("Pacific/Auckland"))
    assert resource_day_keys([ROOM], start, start + timedelta(minutes=45)) == [f"{ROOM}:2027-03-03"]


def test_any_two_overlapping_intervals_share_a_key():
    rng = random.Random(20261126)
    origin = datetime(2027, 3, 1, tzinfo=UTC)
    for _ in range(5000):
        intervals = []
        for _ in range(2):
            start = origin + timedelta(minutes=rng.randrange(0, 4 * 24 * 60))
            intervals.append((start, start + timedelta(minutes=rng.randrange(1, 30 * 60))))
        (a_start, a_end), (b_start, b_end) = intervals
        if a_start < b_end and b_start < a_end:
            assert set(resource_day_keys([ROOM], a_start, a_end)) & set(
                resource_day_keys([ROOM], b_start, b_end)
            )
