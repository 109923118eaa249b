"""Shared resources (capacity above 1) under concurrency: the core's bookings (a unit of work each, as the
workers run them) racing a change of the room's capacity and writers other than the core (an import). DESIGN
§5: a resource's active allocations never hold more units at any instant than its capacity, whoever writes
them. Each test reproduces a defect found in review (revision 029); their docstrings say what happened before.

Every test counts the violations at the end with one query over the committed rows (`over_capacity`)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core import booking
from core.booking import BookingRequest
from core.clients import ClientDetails
from core.config import get_settings
from core.db import UnitOfWork
from core.errors import DomainError, SlotUnavailable
from core.models import Resource, Service, Tenant
from tests import factories

NOW = datetime(2027, 3, 1, 7, 0, tzinfo=UTC)
DAY = date(2027, 3, 3)
EVERY_DAY = [0, 1, 2, 3, 4, 5, 6]


@pytest.fixture(autouse=True)
def enough_connections(monkeypatch):
    """Ten connections at once (the shared server has 100 for every run): ten bookings run together, the rest queue for a connection as jobs queue for a worker."""
    monkeypatch.setenv("VOICEAPPOINT_DB_POOL_SIZE", "10")
    monkeypatch.setenv("VOICEAPPOINT_DB_MAX_OVERFLOW", "0")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@dataclass
class Gym:
    tenant: Tenant
    room: Resource
    instructors: list[Resource]
    classes: dict[str, Service]
    client_id: uuid.UUID | None = None
    phones: Iterator[int] = field(default_factory=lambda: iter(range(10**6)))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tenant.timezone)

    def at(self, day: date, clock: str) -> datetime:
        return datetime.combine(day, clock_time.fromisoformat(clock), tzinfo=self.zone)

    def request(self, kind: str, start: datetime) -> BookingRequest:
        return BookingRequest(
            self.classes[kind].id, start, ClientDetails("Member", phone=f"+3461{next(self.phones):07d}")
        )


def gym(
    engine,
    *,
    capacity: int | None = 5,
    classes: dict[str, tuple[int, int, int]] | None = None,
    instructors: int = 0,
    timezone: str = "Europe/Madrid",
    opens: str = "06:00",
    closes: str = "22:00",
) -> Gym:
    """A business with one room of `capacity`, and `classes`: name -> (minutes, buffer minutes, units of the
    room); each class also needs one of the `instructors` (capacity 1, interchangeable) when there are any."""
    classes = classes or {"class": (60, 0, 2)}
    with Session(engine, expire_on_commit=False) as session:
        tenant = factories.make_tenant(session, timezone=timezone, settings={"slot_step_minutes": 15})
        room = factories.make_resource(session, tenant, "room", capacity, name="Studio")
        teachers = [
            factories.make_resource(session, tenant, "staff", name=f"Instructor {n}")
            for n in range(instructors)
        ]
        services = {}
        for name, (minutes, buffer, units) in classes.items():
            service = factories.make_service(
                session,
                tenant,
                name=name,
                duration_minutes=minutes,
                buffer_time_minutes=buffer,
                available_days=EVERY_DAY,
                available_hours={"start": "00:00", "end": "00:00"},
                min_advance_booking_hours=0,
                max_advance_booking_days=60,
                cancellation_policy_hours=0,
                base_price=10,
            )
            factories.link_service_resource(session, service, room, is_required=True, quantity_required=units)
            for order, teacher in enumerate(teachers):
                factories.link_service_resource(
                    session, service, teacher, is_required=False, preference_order=order
                )
            services[name] = service
        for resource in [room, *teachers]:
            for weekday in EVERY_DAY:
                factories.make_schedule(session, resource, weekday, opens, closes)
        client = factories.make_client(session, tenant)
        session.commit()
        return Gym(tenant, room, teachers, services, client.id)


# --- what the threads do -------------------------------------------------------------------------------


RETRIED = ("40P01", "40001")  # what the worker's base task retries (an OperationalError)


def as_a_worker(action, attempts: int = 8) -> str:
    """Run `action(uow)` in its own unit of work and commit, retrying a deadlock or serialization failure
    as the worker does; the outcome: "ok", a domain error's code, or the unexpected exception."""
    for attempt in range(attempts):
        try:
            with UnitOfWork(action.tenant_id) as uow:
                action(uow)
                uow.commit()
            return "ok" if attempt == 0 else f"ok after {attempt} retries"
        except SlotUnavailable as refused:
            return (
                refused.code
                if refused.details.get("alternatives")
                else f"{refused.code} without alternatives"
            )
        except DomainError as refused:
            return refused.code
        except DBAPIError as error:
            state = getattr(error.orig, "sqlstate", None)
            if state not in RETRIED:
                return f"unexpected {type(error).__name__} {state}: {str(error.orig).splitlines()[0]}"
            time.sleep(random.random() * 0.05)
        except Exception as error:  # noqa: BLE001 - a 500
            return f"unexpected {type(error).__name__}: {error}"
    return "deadlocked on every attempt"


class Book:
    def __init__(self, g: Gym, request: BookingRequest):
        self.tenant_id, self.request, self.booked = g.tenant.id, request, None

    def __call__(self, uow: UnitOfWork) -> None:
        self.booked = None  # an attempt retried after a deadlock booked nothing
        self.booked = booking.book(uow, self.request, NOW)


def all_at_once(calls) -> list:
    """Each call from its own thread, all released at once."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


# --- the invariant, over the committed rows -----------------------------------------------------------

OVER_CAPACITY = text(
    """
    SELECT r.id, r.name, COALESCE(r.capacity, 1) AS capacity, busiest.at, busiest.in_use
    FROM resources r
    CROSS JOIN LATERAL (
        SELECT lower(a.allocated_during) AS at,
               (SELECT sum(o.units) FROM appointment_resources o
                WHERE o.resource_id = r.id AND o.active AND o.allocated_during @> lower(a.allocated_during))
               AS in_use
        FROM appointment_resources a
        WHERE a.resource_id = r.id AND a.active
        ORDER BY in_use DESC LIMIT 1
    ) AS busiest
    WHERE r.tenant_id = :tenant AND busiest.in_use > COALESCE(r.capacity, 1)
    """
)


def over_capacity(engine, g: Gym) -> list[tuple]:
    """Each resource of the business whose busiest instant holds more units than its capacity (in use only
    changes where an allocation starts, so the starts are the instants to look at)."""
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(OVER_CAPACITY, {"tenant": g.tenant.id})]


def set_capacity(engine, room_id: uuid.UUID, capacity: int | None) -> str:
    """An operator's (or the dashboard's) change of the room's capacity: "changed", or the SQLSTATE of its
    refusal."""
    try:
        with Session(engine) as session:
            session.execute(
                text("UPDATE resources SET capacity = :c WHERE id = :id"), {"c": capacity, "id": room_id}
            )
            session.commit()
        return "changed"
    except DBAPIError as refused:
        return refused.orig.sqlstate


def import_allocation(engine, g: Gym, start: datetime, minutes: int, units: int) -> str:
    """A writer other than the core (an import): an appointment and its allocation of the room, in plain
    SQL, in the engine's isolation level. "imported", or the SQLSTATE of its refusal."""
    end = start + timedelta(minutes=minutes)
    service = next(iter(g.classes.values()))
    try:
        with Session(engine) as session:
            appointment_id = uuid.uuid4()
            session.execute(
                text(
                    "INSERT INTO appointments (id, booking_reference, tenant_id, service_id, client_id,"
                    " scheduled_start, scheduled_end, status, booking_method)"
                    " VALUES (:id, :ref, :tenant, :service, :client, :start, :end, 'confirmed', 'import')"
                ),
                {
                    "id": appointment_id,
                    "ref": f"IMP-{appointment_id.hex[:10]}",
                    "tenant": g.tenant.id,
                    "service": service.id,
                    "client": g.client_id,
                    "start": start,
                    "end": end,
                },
            )
            session.execute(
                text(
                    "INSERT INTO appointment_resources (appointment_id, resource_id, allocated_start,"
                    " allocated_end, allocated_during, units)"
                    " VALUES (:appointment, :room, :start, :end, tstzrange(:start, :end, '[)'), :units)"
                ),
                {
                    "appointment": appointment_id,
                    "room": g.room.id,
                    "start": start,
                    "end": end,
                    "units": units,
                },
            )
            session.commit()
        return "imported"
    except DBAPIError as refused:
        return refused.orig.sqlstate


def capacity_changed_during_a_booking(engine, g: Gym, start: datetime, capacity: int) -> str:
    """The room's capacity changed while a booking of a class at `start` is in flight (its allocation
    written, not committed); the change's outcome, as `set_capacity` gives it."""
    with UnitOfWork(g.tenant.id) as in_flight:
        booking.book(in_flight, g.request("class", start), NOW)
        with ThreadPoolExecutor(max_workers=1) as pool:
            change = pool.submit(set_capacity, engine, g.room.id, capacity)
            time.sleep(0.5)
            in_flight.commit()
            return change.result(timeout=30)


def book_now(g: Gym, kind: str, start: datetime) -> booking.BookedAppointment:
    with UnitOfWork(g.tenant.id) as uow:
        booked = booking.book(uow, g.request(kind, start), NOW)
        uow.commit()
    return booked


# --- races with a capacity change or an import -------------------------------------------------------------------------


def test_a_room_lowered_to_one_place_while_a_booking_is_in_flight_is_not_double_booked(committed_engine):
    """A room for two with one group at 10:00; a second group's booking of 10:00 is in flight (inserted, not
    yet committed) when an operator lowers the room to one place. Revision 024 rewrites the allocations it
    can see (the first group's, now exclusive; the exclusion constraint finds no other exclusive row) and
    commits without waiting for the booking, whose row it cannot see; the booking commits its row, written as
    non-exclusive for a room of two. Two groups at once in a room for one, and both rows stay: the exclusion
    constraint covers exclusive rows only, and 025's count non-exclusive rows of shared rooms only."""
    g = gym(committed_engine, capacity=2, classes={"class": (60, 0, 1)})
    book_now(g, "class", g.at(DAY, "10:00"))
    outcome = capacity_changed_during_a_booking(committed_engine, g, g.at(DAY, "10:00"), 1)
    assert over_capacity(committed_engine, g) == [], f"capacity change: {outcome}"


def test_a_two_place_booking_in_flight_while_its_room_is_lowered_to_one_place_is_not_kept(committed_engine):
    """Scenario 1's class (two places of a room for five, and an instructor): a booking in flight while an
    operator lowers the empty room to one place. The change sees no allocation to recheck and commits; the
    booking commits two places in a room for one (023's units check ran at the insert, against five)."""
    g = gym(committed_engine, capacity=5, classes={"class": (60, 0, 2)}, instructors=1)
    outcome = capacity_changed_during_a_booking(committed_engine, g, g.at(DAY, "10:00"), 1)
    assert over_capacity(committed_engine, g) == [], f"capacity change: {outcome}"


def test_a_room_raised_to_two_places_while_a_booking_is_in_flight_is_not_overfilled_later(committed_engine):
    """The other direction: a room for one is raised to two while a booking of it is in flight. The booking's
    row was written exclusive (a room for one) and 024 did not see it, so it stays exclusive in a room for two:
    025 counts only the non-exclusive rows of a shared room, so an import then puts two more groups beside
    it (each counted with the other only): three groups in a room for two."""
    g = gym(committed_engine, capacity=1, classes={"class": (60, 0, 1)})
    start = g.at(DAY, "10:00")
    assert capacity_changed_during_a_booking(committed_engine, g, start, 2) == "changed"
    imported = [import_allocation(committed_engine, g, start, 60, 1) for _ in range(2)]
    assert over_capacity(committed_engine, g) == [], f"import: {imported}"


def test_lowering_a_room_to_one_place_racing_bookings_never_overfills_it(committed_engine):
    """The same race left to the threads: in each round (a new room for two) two members book a class at
    10:00 while an operator lowers the room to one place."""
    violations = []
    for round_ in range(30):
        g = gym(committed_engine, capacity=2, classes={"class": (60, 0, 1)})
        start = g.at(DAY, "10:00")
        calls = [lambda g=g, start=start: as_a_worker(Book(g, g.request("class", start))) for _ in range(2)]

        def change(g=g):
            time.sleep(random.random() * 0.04)
            return set_capacity(committed_engine, g.room.id, 1)

        outcomes = all_at_once([*calls, change])
        found = over_capacity(committed_engine, g)
        if found:
            violations.append((round_, outcomes, found))
    assert violations == [], f"{len(violations)} of 30 rounds overfilled"


def test_a_serializable_import_racing_a_booking_cannot_overfill_a_shared_room(committed_engine):
    """A room for three with two groups at 10:00; a member's booking of the last place is in flight when an
    import (SERIALIZABLE, which revision 025 says PostgreSQL catches) writes a group at 10:00. The import's
    count waits for the booking's advisory lock, then counts with the snapshot its transaction took before
    the booking committed: it does not see the booking, and PostgreSQL's serializable checks do not cover
    the booking's READ COMMITTED transaction, so nothing refuses it. Four groups in a room for three."""
    g = gym(committed_engine, capacity=3, classes={"class": (60, 0, 1)})
    start = g.at(DAY, "10:00")
    for _ in range(2):
        book_now(g, "class", start)
    serializable = committed_engine.execution_options(isolation_level="SERIALIZABLE")
    with UnitOfWork(g.tenant.id) as in_flight:
        booking.book(in_flight, g.request("class", start), NOW)  # holds the room's lock for the day
        with ThreadPoolExecutor(max_workers=1) as pool:
            imported = pool.submit(import_allocation, serializable, g, start, 60, 1)
            time.sleep(0.5)
            in_flight.commit()
            outcome = imported.result(timeout=30)
    assert over_capacity(committed_engine, g) == [], f"import: {outcome}"
