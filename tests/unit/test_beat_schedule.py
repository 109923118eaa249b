"""The periodic schedule: every entry keeps running after the host's clock is set back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from celery.schedules import schedule

from beat_schedule import BEAT_SCHEDULE, ClockSafeInterval

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


def _interval(kind: type[schedule]) -> schedule:
    return kind(timedelta(seconds=30), nowfun=lambda: NOW)


def test_a_last_run_recorded_in_the_future_counts_as_now():
    # A clock an hour fast, then stepped back: Celery's own interval waited the hour (celery#6742).
    an_hour_ahead = NOW + timedelta(hours=1)
    assert _interval(schedule).is_due(an_hour_ahead).next > 3600
    due = _interval(ClockSafeInterval).is_due(an_hour_ahead)
    assert (due.is_due, due.next) == (False, 30)


@pytest.mark.parametrize(("ago", "is_due"), [(31, True), (30, True), (10, False)])
def test_a_last_run_in_the_past_is_judged_as_celery_judges_it(ago, is_due):
    last_run = NOW - timedelta(seconds=ago)
    assert _interval(ClockSafeInterval).is_due(last_run).is_due is is_due
    assert _interval(schedule).is_due(last_run).is_due is is_due


@pytest.mark.parametrize("name", sorted(BEAT_SCHEDULE))
def test_every_entry_survives_a_clock_set_back(name):
    assert isinstance(BEAT_SCHEDULE[name]["schedule"], ClockSafeInterval)


@pytest.mark.parametrize("name", sorted(BEAT_SCHEDULE))
def test_no_entry_leaves_a_result_in_redis(name):
    # Nothing reads a periodic task's result: stored, each sweep's stayed in Redis for 24 h.
    assert BEAT_SCHEDULE[name]["options"]["ignore_result"] is True
