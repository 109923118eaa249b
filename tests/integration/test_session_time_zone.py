"""Every database session is in UTC, whatever the server's, the database's or the client's default zone.

psycopg returns timestamptz values in the session's zone; in a zone with DST, Python's arithmetic on them is
wall-clock arithmetic. These tests set PGTZ (libpq sends it as the session's TimeZone, as a server or
database default would set it) to the business's own zone.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, text

from core import booking
from core.booking import BookingRequest
from core.clients import ClientDetails
from core.db import UnitOfWork, make_engine
from core.errors import SlotUnavailable
from tests import scenarios
from tests.scenarios import committed_salon

MADRID = ZoneInfo("Europe/Madrid")


@pytest.fixture
def sessions_in_madrid(monkeypatch):
    monkeypatch.setenv("PGTZ", "Europe/Madrid")


def book(salon, start: datetime, phone: str, now: datetime):
    request = BookingRequest(salon.haircut.id, start, ClientDetails("Ana", phone=phone))
    return scenarios.book(salon, request, now)


def test_the_applications_sessions_are_in_utc_where_the_default_zone_is_another(
    sessions_in_madrid, database_url
):
    bare = create_engine(database_url)
    application = make_engine(database_url)
    try:
        with bare.connect() as connection:  # what the default would give: the guard below is needed
            assert connection.execute(text("SHOW TimeZone")).scalar_one() == "Europe/Madrid"
        with application.connect() as connection:
            assert connection.execute(text("SHOW TimeZone")).scalar_one() == "UTC"
            connection.rollback()  # the pool's rollback on check-in keeps it too
            value = connection.execute(text("SELECT timestamptz '2027-03-28 01:30:00+00'")).scalar_one()
            assert value.utcoffset() == timedelta(0)
    finally:
        bare.dispose()
        application.dispose()


def test_starting_early_on_the_spring_forward_night_counts_real_time(sessions_in_madrid, committed_engine):
    salon = committed_salon(committed_engine, opens="00:00", closes="23:45")
    # 03:30 CEST is 01:30 UTC: the clocks jumped from 02:00 to 03:00 that night.
    booked = book(salon, salon.at(date(2027, 3, 28), "03:30"), "612000001", datetime(2027, 3, 1, tzinfo=UTC))
    # 45 minutes before the start, within the hour an appointment may start early. Read in Madrid's zone,
    # "an hour before 03:30" was 02:30 on the wall clock, a time that did not exist, taken as 01:30 UTC.
    with UnitOfWork(salon.tenant.id) as uow:
        started = booking.start(uow, booked.appointment_id, datetime(2027, 3, 28, 0, 45, tzinfo=UTC))
        uow.commit()
    assert started.status == "in_progress"


def test_a_refused_move_in_the_repeated_autumn_hour_does_not_offer_its_own_place(
    sessions_in_madrid, committed_engine
):
    salon = committed_salon(committed_engine, stylists=1, chairs=1, opens="00:00", closes="23:45")
    now = datetime(2027, 10, 1, tzinfo=UTC)
    # 02:30 in the first pass of the repeated hour (CEST): in Madrid's zone it never equals a UTC time.
    mine = book(salon, datetime(2027, 10, 31, 2, 30, tzinfo=MADRID), "612000001", now)
    book(salon, salon.at(date(2027, 10, 31), "01:45"), "612000002", now)
    with UnitOfWork(salon.tenant.id) as uow, pytest.raises(SlotUnavailable) as taken:
        booking.reschedule(uow, mine.appointment_id, salon.at(date(2027, 10, 31), "01:45"), now)
    starts = [alternative["start"] for alternative in taken.value.details["alternatives"]]
    assert "2027-10-31T01:00:00+02:00" in starts  # the search reached these hours
    assert "2027-10-31T02:30:00+02:00" not in starts
