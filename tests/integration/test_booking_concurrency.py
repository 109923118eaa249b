"""Booking from many threads at once on the real database, with real commits: the locks and the
exclusion constraint must give one winner per slot and never exceed a plan's monthly allowance."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from core import booking, clients, intake
from core.booking import EXCLUSIVE_INSERT_LOCKS, BookingRequest
from core.clients import ClientDetails
from core.db import HOLDS_SESSION_LOCKS, UnitOfWork
from core.errors import DomainError
from core.models import Appointment, AppointmentResource, Client, IntakeJob, Resource, VapiCallLog
from tests import factories
from tests.scenarios import EVERY_DAY, build_salon

NOW = datetime(2027, 3, 1, 7, 0, tzinfo=UTC)
DAY = date(2027, 3, 3)


@pytest.fixture
def committed(committed_engine):
    def build(**kwargs):
        with Session(committed_engine, expire_on_commit=False) as session:
            salon = build_salon(session, **kwargs)
            session.commit()
            return salon

    return build


def book_all(salon, requests: list[BookingRequest]) -> list[str]:
    """Book every request from its own thread, all released at once; the outcome code of each."""
    barrier = threading.Barrier(len(requests))

    def attempt(req: BookingRequest) -> str:
        barrier.wait()
        try:
            with UnitOfWork(salon.tenant.id) as uow:
                booking.book(uow, req, NOW)
                uow.commit()
            return "booked"
        except DomainError as error:
            return error.code

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(attempt, requests))


def haircut_at(salon, clock: str, n: int, stylist=None) -> BookingRequest:
    return BookingRequest(
        salon.haircut.id,
        salon.at(DAY, clock),
        ClientDetails("Caller", phone=f"+3461400{n:04d}"),
        (stylist.id,) if stylist else (),
    )


def count(engine, model, *where) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def test_twenty_threads_for_one_slot_give_one_booking(committed_engine, committed):
    salon = committed()
    outcomes = book_all(salon, [haircut_at(salon, "10:00", n) for n in range(20)])
    assert outcomes.count("booked") == 1
    assert set(outcomes) == {"booked", "slot_taken"}
    assert count(committed_engine, Appointment, Appointment.tenant_id == salon.tenant.id) == 1


def test_different_stylists_sharing_one_chair_are_serialised_by_the_chair(committed_engine, committed):
    salon = committed(stylists=3)
    requests = [haircut_at(salon, "10:00" if n % 2 else "10:30", n, salon.stylists[n % 3]) for n in range(12)]
    outcomes = book_all(salon, requests)
    assert outcomes.count("booked") == 1
    chair_rows = count(
        committed_engine,
        AppointmentResource,
        AppointmentResource.resource_id == salon.chairs[0].id,
        AppointmentResource.active.is_(True),
    )
    assert chair_rows == 1


def test_one_new_client_booking_twice_at_once_is_created_once(committed_engine, committed):
    salon = committed(chairs=1)
    same_person = [
        BookingRequest(salon.haircut.id, salon.at(DAY, clock), ClientDetails("Ana", phone="+34612000111"))
        for clock in ("10:00", "11:00", "12:00", "13:00")
    ]
    outcomes = book_all(salon, same_person)
    assert outcomes == ["booked"] * 4
    assert count(committed_engine, Client, Client.tenant_id == salon.tenant.id) == 1
    # The winner counted its booking in the insert, each loser in an update of the winner's row.
    with Session(committed_engine) as session:
        client = session.scalar(select(Client).where(Client.tenant_id == salon.tenant.id))
        assert client.total_appointments == 4
        assert client.last_appointment_date == salon.at(DAY, "13:00")


def test_two_people_sharing_an_email_booking_at_once_get_a_client_each(committed_engine, committed):
    salon = committed(stylists=1, chairs=1)
    for n in range(5):  # five new families: the race for the shared address is run five times
        family = [
            BookingRequest(
                salon.haircut.id,
                salon.at(DAY, clock),
                ClientDetails(name, phone=f"+3461200{n}{digit}00", email=f"family{n}@example.com"),
            )
            for name, clock, digit in (("Ana", "10:00", 1), ("Pedro", "13:00", 2))
        ]
        salon_day = [dataclasses.replace(r, start=r.start + timedelta(days=n)) for r in family]
        assert book_all(salon, salon_day) == ["booked", "booked"]
    with Session(committed_engine) as session:
        clients = session.execute(
            select(Client.phone, Client.email).where(Client.tenant_id == salon.tenant.id)
        ).all()
    # Each person has a client of their own; each address stays with exactly one of them.
    assert len(clients) == 10
    assert len({c.phone for c in clients}) == 10
    assert sorted(c.email for c in clients if c.email) == [f"family{n}@example.com" for n in range(5)]


def test_two_bookings_cannot_both_take_the_last_unit_of_the_plan(committed_engine, committed):
    salon = committed(stylists=1, chairs=1)
    with Session(committed_engine) as session:
        plan = factories.make_plan(session, max_appointments_per_month=3)
        factories.make_subscription(session, session.merge(salon.tenant), plan, status="active")
        session.commit()
    requests = [haircut_at(salon, f"{9 + n:02d}:00", n) for n in range(6)]
    outcomes = book_all(salon, requests)
    assert outcomes.count("booked") == 3
    assert outcomes.count("plan_limit_reached") == 3
    assert count(committed_engine, Appointment, Appointment.tenant_id == salon.tenant.id) == 3


def test_a_booking_counting_its_plan_does_not_hold_up_new_requests_of_its_business(
    committed_engine, committed
):
    """The count is serialised by a lock on the tenant's row that excludes only other counts and changes
    (FOR NO KEY UPDATE): a request recorded meanwhile, whose row references the tenant (its foreign key
    check takes a KEY SHARE lock), goes in at once instead of waiting for the booking to commit."""
    salon = committed(stylists=1, chairs=1)
    with Session(committed_engine) as session:
        plan = factories.make_plan(session, max_appointments_per_month=10)
        factories.make_subscription(session, session.merge(salon.tenant), plan, status="active")
        session.commit()
    later = {
        "service_id": str(salon.haircut.id),
        "start": salon.at(DAY, "11:00").isoformat(),
        "client": {"first_name": "Online", "phone": "+34614009999"},
    }
    with UnitOfWork(salon.tenant.id) as counting:
        booking.book(counting, haircut_at(salon, "09:00", 1), NOW)  # holds the tenant's row, not committed
        with UnitOfWork(salon.tenant.id) as recording:
            recording.session.execute(text("SET LOCAL lock_timeout = '2s'"))
            job, created = intake.submit(recording, "booking", later, None, NOW, lambda *_: None)
        counting.commit()
    assert created
    assert count(committed_engine, IntakeJob, IntakeJob.id == job.job_id) == 1
    assert count(committed_engine, Appointment, Appointment.tenant_id == salon.tenant.id) == 1
    # Not left queued for a later test's sweep (the e2e tests share this run's queues) to send.
    with Session(committed_engine) as session:
        session.execute(update(IntakeJob).where(IntakeJob.id == job.job_id).values(status="failed", error={}))
        session.commit()


def test_a_change_to_an_appointment_does_not_hold_up_rows_that_refer_to_it(committed_engine, committed):
    """A cancellation locks the appointment against other changes only (FOR NO KEY UPDATE): the voice
    assistant's log of a call about it goes in meanwhile, without waiting for the cancellation to commit."""
    salon = committed(stylists=1, chairs=1)
    with UnitOfWork(salon.tenant.id) as uow:
        appointment_id = booking.book(uow, haircut_at(salon, "09:00", 1), NOW).appointment_id
        uow.commit()
    with UnitOfWork(salon.tenant.id) as cancelling:
        booking.cancel(cancelling, appointment_id, "Caller asked", NOW)  # holds the appointment's row
        with UnitOfWork(salon.tenant.id) as logging:
            logging.session.execute(text("SET LOCAL lock_timeout = '2s'"))
            logging.session.add(
                VapiCallLog(
                    tenant_id=salon.tenant.id,
                    vapi_call_id=factories.unique("call"),
                    appointment_id=appointment_id,
                )
            )
            logging.commit()
        cancelling.commit()
    assert count(committed_engine, VapiCallLog, VapiCallLog.appointment_id == appointment_id) == 1
    assert (
        count(
            committed_engine, Appointment, Appointment.status == "cancelled", Appointment.id == appointment_id
        )
        == 1
    )


@contextmanager
def a_booking_waiting_for_its_stylist(committed_engine, salon, request: BookingRequest) -> Iterator[None]:
    """`request` being booked in a thread of its own and held inside its allocation, where another
    transaction has taken the same stylist at that time and not committed yet. On leaving, that
    transaction rolls back and the booking goes through and commits."""
    with a_change_waiting_for_a_stylist(
        committed_engine,
        salon,
        request.resource_ids[0],
        request.start,
        lambda uow: booking.book(uow, request, NOW),
    ) as outcome:
        yield
    assert len(outcome) == 1 and isinstance(outcome[0], booking.BookedAppointment), outcome


@contextmanager
def a_change_waiting_for_a_stylist(
    committed_engine, salon, stylist_id, start: datetime, change, *, taken: bool = False
) -> Iterator[list]:
    """`change(uow)` (a booking, a move) run in a thread of its own and held inside its allocation, where
    another transaction has taken the stylist at `start` and not committed yet. On leaving, that
    transaction commits if `taken` (else rolls back) and the change goes on; the list yielded then holds
    its result or its DomainError."""
    holder = Session(committed_engine)
    stylist = holder.get(Resource, stylist_id)
    someone = factories.make_client(holder, holder.merge(salon.tenant))
    factories.make_appointment(holder, salon.tenant, salon.haircut, someone, start, resources=[stylist])
    outcome: list = []

    def change_it() -> None:
        try:
            with UnitOfWork(salon.tenant.id) as uow:
                outcome.append(change(uow))
                uow.commit()
        except DomainError as error:
            outcome.append(error)

    thread = threading.Thread(target=change_it)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not _waiting_to_allocate(committed_engine):
            assert time.monotonic() < deadline, "the change never reached its allocation"
            time.sleep(0.02)
        yield outcome
    finally:
        holder.commit() if taken else holder.rollback()
        holder.close()
        thread.join(timeout=30)


def test_a_move_whose_stylist_is_taken_meanwhile_takes_another_free_one(committed_engine, committed):
    """The move keeps the client's stylist when free; if another booking takes that stylist while the move
    is under way, another free stylist will do, as for a new booking."""
    salon = committed(stylists=2, chairs=0)
    kept, other = salon.stylists
    mine = book_at_once(salon, stylist_request(salon, "10:00", 0, "+34614005555"))
    target = salon.at(DAY, "14:00")
    with a_change_waiting_for_a_stylist(
        committed_engine,
        salon,
        kept.id,
        target,
        lambda uow: booking.reschedule(uow, mine.appointment_id, target, NOW),
        taken=True,
    ) as outcome:
        pass
    [moved] = outcome
    assert isinstance(moved, booking.BookedAppointment), moved
    assert (moved.start, moved.resource_ids) == (target, (other.id,))


def _waiting_to_allocate(engine) -> bool:
    # As the tables' owner: the application role may not read other sessions' statements.
    owner = create_engine(engine.url)
    try:
        with owner.connect() as connection:
            waiting = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO appointment_resources%'"
                )
            )
    finally:
        owner.dispose()
    return waiting == 1


def book_at_once(salon, request: BookingRequest) -> booking.BookedAppointment:
    """Book and commit, failing (55P03) instead of waiting more than two seconds for a lock."""
    with UnitOfWork(salon.tenant.id) as uow:
        uow.session.execute(text("SET LOCAL lock_timeout = '2s'"))
        booked = booking.book(uow, request, NOW)
        uow.commit()
    return booked


def stylist_request(salon, clock: str, stylist: int, phone: str) -> BookingRequest:
    return BookingRequest(
        salon.haircut.id,
        salon.at(DAY, clock),
        ClientDetails("Caller", phone=phone),
        (salon.stylists[stylist].id,),
    )


def test_a_persons_second_booking_does_not_wait_for_their_first_one_in_progress(committed_engine, committed):
    """A parent booking for the family: the booking that counts the returning client (its row locked to the
    commit) does so last, so a second booking of the same person waits at most for that commit."""
    salon = committed(stylists=2, chairs=0)
    phone = "+34614002222"
    book_at_once(salon, stylist_request(salon, "09:00", 1, phone))  # a returning client from now on
    with a_booking_waiting_for_its_stylist(
        committed_engine, salon, stylist_request(salon, "10:00", 0, phone)
    ):
        book_at_once(salon, stylist_request(salon, "12:00", 1, phone))
    with Session(committed_engine) as session:
        client = session.scalars(select(Client).where(Client.tenant_id == salon.tenant.id)).one()
    assert client.total_appointments == 3
    assert client.last_appointment_date == salon.at(DAY, "12:00")


def test_a_limited_plans_bookings_do_not_wait_for_each_other_until_their_commits(committed_engine, committed):
    """The plan's count is serialised per business, but it comes last: a booking waiting for its stylist
    holds up no other booking of the business."""
    salon = committed(stylists=2, chairs=0)
    with Session(committed_engine) as session:
        plan = factories.make_plan(session, max_appointments_per_month=10)
        factories.make_subscription(session, session.merge(salon.tenant), plan, status="active")
        session.commit()
    with a_booking_waiting_for_its_stylist(
        committed_engine, salon, stylist_request(salon, "10:00", 0, "+34614003333")
    ):
        book_at_once(salon, stylist_request(salon, "12:00", 1, "+34614004444"))
    assert count(committed_engine, Appointment, Appointment.tenant_id == salon.tenant.id) == 2


def test_simultaneous_bookings_that_lose_a_stylist_take_the_next_free_one(committed_engine, committed):
    salon = committed(stylists=10, chairs=0)
    outcomes = book_all(salon, [haircut_at(salon, "10:00", n) for n in range(10)])
    assert outcomes == ["booked"] * 10, outcomes
    with Session(committed_engine) as session:
        stylists = session.scalars(
            select(AppointmentResource.resource_id)
            .join(Appointment, Appointment.id == AppointmentResource.appointment_id)
            .where(Appointment.tenant_id == salon.tenant.id)
        ).all()
    assert sorted(stylists) == sorted(s.id for s in salon.stylists)


def yoga_room(committed_engine):
    """A salon whose haircut takes a place in a room for three, open 09:00-18:00 every day."""
    with Session(committed_engine, expire_on_commit=False) as session:
        salon = build_salon(session, stylists=0, chairs=0)
        room = factories.make_resource(session, salon.tenant, "room", 3, name="Yoga room")
        factories.link_service_resource(session, salon.haircut, room, is_required=True)
        for day in range(7):
            factories.make_schedule(session, room, day, "09:00", "18:00")
        session.commit()
    return salon, room


def places_taken(committed_engine, room) -> int:
    return count(
        committed_engine,
        AppointmentResource,
        AppointmentResource.resource_id == room.id,
        AppointmentResource.active,
    )


def test_a_shared_room_takes_as_many_bookings_as_its_capacity(committed_engine):
    salon, room = yoga_room(committed_engine)
    outcomes = book_all(salon, [haircut_at(salon, "10:00", n) for n in range(10)])
    assert outcomes.count("booked") == 3
    assert set(outcomes) == {"booked", "slot_taken"}
    assert places_taken(committed_engine, room) == 3


def most_places_in_use(committed_engine, room) -> int:
    """The most places of the room taken at any one instant (what is in use changes only where an
    allocation starts)."""
    with committed_engine.connect() as connection:
        return connection.execute(
            text(
                "SELECT coalesce(max(in_use), 0) FROM ("
                " SELECT (SELECT sum(other.units) FROM appointment_resources other"
                "         WHERE other.resource_id = a.resource_id AND other.active"
                "           AND other.allocated_during @> lower(a.allocated_during)) AS in_use"
                " FROM appointment_resources a WHERE a.resource_id = :room AND a.active) AS instants"
            ),
            {"room": room.id},
        ).scalar_one()


def test_a_place_between_two_groups_is_booked_beside_the_larger_not_their_sum(committed_engine):
    """Two 45-minute groups of two at 10:00 and 11:00 never hold places together, so a third person fits
    10:30-11:15 in a room for three (at most two others at any instant)."""
    salon, room = yoga_room(committed_engine)
    requests = [haircut_at(salon, clock, n) for n, clock in enumerate(["10:00", "10:00", "11:00", "11:00"])]
    assert [outcome for request in requests for outcome in book_all(salon, [request])] == ["booked"] * 4
    assert book_all(salon, [haircut_at(salon, "10:30", 9)]) == ["booked"]
    assert book_all(salon, [haircut_at(salon, "10:30", 10)]) == ["slot_taken"]
    assert places_taken(committed_engine, room) == 5
    assert most_places_in_use(committed_engine, room) == 3


def test_staggered_bookings_racing_for_a_shared_room_never_exceed_it_at_any_instant(committed_engine):
    salon, room = yoga_room(committed_engine)
    clocks = ["10:00", "10:30", "11:00"] * 4
    outcomes = book_all(salon, [haircut_at(salon, clock, n) for n, clock in enumerate(clocks)])
    assert set(outcomes) == {"booked", "slot_taken"}
    assert places_taken(committed_engine, room) == outcomes.count("booked") >= 3
    assert most_places_in_use(committed_engine, room) == 3


def room_with_one_place_left(committed_engine):
    """A room for three with two groups at 10:00, and two cancelled groups at 10:00 that a writer other than
    the core (an import, a script) might revive: the statements that would."""
    salon, room = yoga_room(committed_engine)
    start = salon.at(DAY, "10:00")
    with Session(committed_engine, expire_on_commit=False) as session:
        tenant, haircut = session.merge(salon.tenant), session.merge(salon.haircut)
        client = factories.make_client(session, tenant)
        appointments = [
            factories.make_appointment(
                session, tenant, haircut, client, start, resources=[session.merge(room)], status=status
            )
            for status in ("scheduled", "scheduled", "cancelled", "cancelled")  # cancelled: inactive
        ]
        session.commit()
    revivals = [
        update(AppointmentResource)
        .where(AppointmentResource.appointment_id == appointment.id)
        .values(active=True)
        for appointment in appointments[2:]
    ]
    return room, revivals


def test_two_writers_other_than_the_core_cannot_overfill_a_shared_room_between_them(committed_engine):
    """An import and a script each put a group in the last place of a room for three at the same time. Each
    counted its own row and the two already there (three, allowed), and both went in: four. The database's
    count (revision 025) waits for the other writer's commit and then sees its row."""
    room, (revive, other) = room_with_one_place_left(committed_engine)
    with Session(committed_engine) as first, Session(committed_engine) as second:
        first.execute(revive)  # not committed yet
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(lambda: (second.execute(other), second.commit()))
            time.sleep(0.5)
            assert not waiting.done(), "the second writer did not wait for the first"
            first.commit()
            with pytest.raises(IntegrityError) as refused:
                waiting.result(timeout=10)
    assert refused.value.orig.diag.constraint_name == "appointment_resources_within_shared_capacity"
    assert places_taken(committed_engine, room) == 3


def test_a_repeatable_read_writer_cannot_overfill_a_shared_room(committed_engine):
    """Two writers other than the core (an import and a script) in REPEATABLE READ each put a group in the
    last place of a room for three. The second waits for the first's advisory lock, as in READ COMMITTED,
    but then counts with its transaction's snapshot, taken before the first committed: it does not see the
    first's row and lets a fourth group in. (SERIALIZABLE is caught by PostgreSQL: 40001.)"""
    room, revivals = room_with_one_place_left(committed_engine)

    repeatable = committed_engine.execution_options(isolation_level="REPEATABLE READ")
    outcomes = []

    def write(session, revival):
        try:
            session.execute(revival)
            return True
        except DBAPIError as refused:
            outcomes.append(refused.orig.sqlstate)
            session.rollback()
            return False

    with Session(repeatable) as first, Session(repeatable) as second:
        first.execute(text("SELECT 1"))  # both snapshots are taken before either writes
        second.execute(text("SELECT 1"))
        first_wrote = write(first, revivals[0])  # not committed yet
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(lambda: write(second, revivals[1]) and second.commit())
            time.sleep(0.5)
            if first_wrote:
                first.commit()
            try:
                waiting.result(timeout=10)
            except DBAPIError as refused:
                outcomes.append(refused.orig.sqlstate)
    assert places_taken(committed_engine, room) <= 3, outcomes  # a room for three
    assert set(outcomes) <= {"40001", "23P01"}


def test_a_shared_rooms_bookings_wait_for_each_other_only_on_the_same_day(committed_engine):
    """Counting a room's free places is serialised per room and day: a booking of the same room a week
    later goes in while one of today is in progress; one of the same day waits for it."""
    salon, room = yoga_room(committed_engine)
    week_later = dataclasses.replace(
        haircut_at(salon, "10:00", 2), start=salon.at(DAY + timedelta(days=7), "10:00")
    )
    with UnitOfWork(salon.tenant.id) as in_progress:
        booking.book(in_progress, haircut_at(salon, "10:00", 1), NOW)  # not committed yet
        book_at_once(salon, week_later)
        with pytest.raises(OperationalError, match="lock timeout"):
            book_at_once(salon, haircut_at(salon, "10:00", 3))
        in_progress.commit()
    assert places_taken(committed_engine, room) == 2


def _lock_waits(engine) -> list[str]:
    """What each session of this database that waits for a lock waits for (pg_locks.locktype)."""
    with engine.connect() as connection:
        return sorted(
            connection.scalars(
                text(
                    "SELECT l.locktype FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE NOT l.granted AND a.datname = current_database()"
                )
            )
        )


def test_bookings_racing_for_a_resource_put_their_rows_in_one_at_a_time(committed_engine, committed):
    """PostgreSQL checks the exclusion constraint after it has put the new row in the index. Two bookings
    inserting overlapping rows at the same instant each found the other's row and waited for it, a
    deadlock; the aborted one looked again and inserted again, and twenty bookings for one slot went on
    like that for most of a minute (seen in CI). So the rows go in one booking at a time per resource: while
    one booking waits for an overlapping one to commit, the next waits for its turn, with no row in the
    index for anybody to wait on."""
    salon = committed()
    outcomes: list[str] = []

    def attempt(n: int) -> None:
        try:
            with UnitOfWork(salon.tenant.id) as uow:
                booking.book(uow, haircut_at(salon, "10:00", n), NOW)
                uow.commit()
            outcomes.append("booked")
        except DomainError as error:
            outcomes.append(error.code)

    with UnitOfWork(salon.tenant.id) as first:
        booking.book(first, haircut_at(salon, "10:00", 0), NOW)  # not committed yet
        racers = [threading.Thread(target=attempt, args=(n,)) for n in (1, 2)]
        for racer in racers:
            racer.start()
        deadline = time.monotonic() + 10
        while len(waits := _lock_waits(committed_engine)) < 2:
            assert time.monotonic() < deadline, f"the racing bookings never both waited: {waits}"
            time.sleep(0.02)
        # One waits for the first booking's commit, the other for its turn to insert.
        assert waits == ["advisory", "transactionid"]
        first.commit()
    for racer in racers:
        racer.join(timeout=30)
    assert outcomes == ["slot_taken", "slot_taken"]
    assert count(committed_engine, Appointment, Appointment.tenant_id == salon.tenant.id) == 1


def test_a_connection_goes_back_to_the_pool_without_the_insert_locks_it_still_held(
    committed_engine, committed
):
    """The insert locks outlive a rollback; one left behind by an error between lock and unlock would
    stop every later booking of that resource and day on this process, so the pool releases them."""
    salon = committed()
    with UnitOfWork(salon.tenant.id) as uow:
        connection = uow.session.connection()
        connection.info[HOLDS_SESSION_LOCKS] = True  # as `locked_meanwhile` marks it, before its lock
        connection.execute(
            text("SELECT pg_advisory_lock(:namespace, 1)"), {"namespace": EXCLUSIVE_INSERT_LOCKS}
        )
        pid = connection.scalar(text("SELECT pg_backend_pid()"))
    with committed_engine.connect() as connection:
        held = connection.scalar(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = :pid"), {"pid": pid}
        )
    assert held == 0


def test_a_connection_that_dies_under_the_insert_locks_raises_why_it_died(committed_engine, committed):
    """Its locks went with it: releasing them on the dead connection raised PendingRollbackError in place
    of the OperationalError that the worker retries (a database restart failed bookings for good)."""
    salon = committed()
    owner = create_engine(committed_engine.url)  # may end another session's backend
    try:
        with (
            UnitOfWork(salon.tenant.id) as uow,
            pytest.raises(OperationalError),
            uow.locked_meanwhile(EXCLUSIVE_INSERT_LOCKS, ["a-resource:2027-03-03"]),
        ):
            pid = uow.session.scalar(text("SELECT pg_backend_pid()"))
            with owner.connect() as connection:
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            uow.session.execute(text("SELECT 1"))
    finally:
        owner.dispose()


def the_second_waits_for_the_held_first(
    committed_engine,
    first: threading.Thread,
    held: threading.Event,
    second: threading.Thread,
    go_on: threading.Event,
) -> None:
    """Start `first`; once it is `held` (it waits for `go_on`), start `second` and wait until it waits for
    a lock (or has ended); then let `first` go on, and wait for both."""
    first.start()
    assert held.wait(10)
    second.start()
    deadline = time.monotonic() + 10
    while second.is_alive() and not _lock_waits(committed_engine):
        assert time.monotonic() < deadline, f"{second.name} neither finished nor waited"
        time.sleep(0.02)
    go_on.set()
    first.join(30)
    second.join(30)


def test_a_returning_clients_two_bookings_sharing_a_room_do_not_deadlock(
    committed_engine, committed, monkeypatch
):
    """A returning client's row is locked last, with the count, after the shared room's day, as every
    booking locks them. (A contact the client added was once written first: that deadlocked a second
    booking of the same person that held the room's day and waited for the client's row.)"""
    salon = committed(stylists=2, chairs=0)
    with Session(committed_engine, expire_on_commit=False) as session:
        room = factories.make_resource(session, session.merge(salon.tenant), "room", 3, name="Big room")
        factories.link_service_resource(session, session.merge(salon.haircut), room, is_required=True)
        for day in EVERY_DAY:
            factories.make_schedule(session, room, day, "09:00", "18:00")
        session.add(Client(tenant_id=salon.tenant.id, first_name="Ana", phone="+34614007777"))  # a caller
        session.commit()

    found = threading.Event()
    go_on = threading.Event()
    real_for_booking = clients.for_booking

    def held_after_finding_the_client(uow, tenant, details, booked_start):
        found_client = real_for_booking(uow, tenant, details, booked_start)
        if threading.current_thread().name == "online":
            found.set()
            go_on.wait(10)
        return found_client

    monkeypatch.setattr(clients, "for_booking", held_after_finding_the_client)
    outcomes: dict[str, str] = {}

    def book_as(name: str, request: BookingRequest) -> None:
        try:
            book_at_once(salon, request)
            outcomes[name] = "booked"
        except Exception as error:  # noqa: BLE001 - the outcome is what the test compares
            outcomes[name] = getattr(error, "code", repr(error)[:120])

    online = BookingRequest(  # the client now gives an email too, which is not stored
        salon.haircut.id,
        salon.at(DAY, "10:00"),
        ClientDetails("Ana", phone="+34614007777", email="ana@example.com"),
        (salon.stylists[0].id,),
    )
    call = stylist_request(salon, "15:00", 1, "+34614007777")
    first = threading.Thread(target=book_as, args=("online", online), name="online")
    second = threading.Thread(target=book_as, args=("call", call), name="call")
    the_second_waits_for_the_held_first(committed_engine, first, found, second, go_on)
    assert outcomes == {"online": "booked", "call": "booked"}
    with Session(committed_engine) as session:
        client = session.scalars(select(Client).where(Client.tenant_id == salon.tenant.id)).one()
    assert (client.email, client.total_appointments) == (None, 2)


def a_move_and_a_booking_of_its_client(committed_engine, monkeypatch, salon, mine, move_to, request):
    """The move of `mine` held just before it recounts its client (its new rows in, not committed) while
    `request`, a booking of the same client (a parent booking for the family), starts and waits for the
    move; then both go on. The outcome of each."""
    allocated, go_on = threading.Event(), threading.Event()
    real_recount = clients.recount_latest

    def held_recount(uow, client_id):
        if threading.current_thread().name == "move":
            allocated.set()
            go_on.wait(10)
        return real_recount(uow, client_id)

    monkeypatch.setattr(clients, "recount_latest", held_recount)
    outcomes: dict[str, str] = {}

    def run(change) -> None:
        name = threading.current_thread().name
        try:
            with UnitOfWork(salon.tenant.id) as uow:
                change(uow)
                uow.commit()
            outcomes[name] = "ok"
        except DomainError as error:
            outcomes[name] = error.code
        except Exception as error:  # noqa: BLE001 - the outcome is what the test compares
            outcomes[name] = repr(error)[:120]

    move = threading.Thread(
        target=run, name="move", args=(lambda uow: booking.reschedule(uow, mine, move_to, NOW),)
    )
    again = threading.Thread(target=run, name="book", args=(lambda uow: booking.book(uow, request, NOW),))
    the_second_waits_for_the_held_first(committed_engine, move, allocated, again, go_on)
    return outcomes


def test_a_move_in_a_shared_room_and_another_booking_of_the_same_client_do_not_deadlock(
    committed_engine, monkeypatch
):
    """The booking's appointment row holds a KEY SHARE on the client's row (its foreign key) while it waits
    for the room's day, which the move holds; the move's recount then locked the client's row FOR UPDATE:
    a deadlock, though the room has places for both."""
    salon, _ = yoga_room(committed_engine)
    mine = book_at_once(salon, haircut_at(salon, "10:00", 9999))
    outcomes = a_move_and_a_booking_of_its_client(
        committed_engine,
        monkeypatch,
        salon,
        mine.appointment_id,
        salon.at(DAY, "15:00"),
        haircut_at(salon, "11:00", 9999),
    )
    assert outcomes == {"move": "ok", "book": "ok"}
