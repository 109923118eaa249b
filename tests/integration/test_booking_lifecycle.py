"""The booking life cycle as a state machine, on the real database.

Hypothesis runs random sequences of book, reschedule, cancel, confirm, start, complete and mark_no_show
against a fresh salon per example, with `now` only moving forward. A plain model of the salon predicts
the outcome of every call (success, or the code of the DomainError it must raise) and what the database
must then hold; after every step the database is read back with SQL and compared with the model, and
the invariants that need no model (no double booking, capacity, the plan's limit) are checked in SQL.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

from core import booking
from core.booking import BookingRequest
from core.clients import ClientDetails
from core.db import UnitOfWork
from core.errors import (
    Conflict,
    DomainError,
    IllegalTransition,
    InvalidRequest,
    LimitReached,
    NotFound,
    SlotUnavailable,
)
from tests import factories
from tests.scenarios import EVERY_DAY, build_salon

# A Wednesday morning. Madrid moves to summer time on Sunday 28 March: the UTC offset of the slots changes.
START = datetime(2027, 3, 24, 8, 0, tzinfo=UTC)
# The local days bookings fall on: today, that weekend, the last day of March and the first of April (two
# months for the plan's limit), and the day the 60-day booking horizon ends (too_far from 10:15 on at START).
DAYS = (
    date(2027, 3, 24),
    date(2027, 3, 26),
    date(2027, 3, 27),
    date(2027, 3, 28),
    date(2027, 3, 31),
    date(2027, 4, 1),
    date(2027, 5, 23),
)
OPENS, CLOSES = time(9, 0), time(18, 0)
# Local starts from before opening to after the last start that ends by closing (17:15 for 45 minutes).
CLOCKS = tuple(f"{minutes // 60:02d}:{minutes % 60:02d}" for minutes in range(8 * 60 + 30, 18 * 60 + 1, 15))
DURATION = timedelta(minutes=45)
GRID = 15
MAX_ADVANCE = timedelta(days=60)

# Spellings a caller might give and the contact they stand for: the same person comes back.
PHONES = {
    "612 345 678": "+34612345678",
    "+34 612-345-678": "+34612345678",
    "(+34) 611 11 11 11": "+34611111111",
    "+34622222222": "+34622222222",
}
EMAILS = {
    "Ana@Example.com": "ana@example.com",
    "ana@example.com": "ana@example.com",
    "luis@example.com": "luis@example.com",
}
BAD_PHONE = "12"

# Which DomainError subclass each expected code comes as: the API's status depends on the class.
ERROR_CLASSES = {
    "invalid_phone": InvalidRequest,
    "contact_required": InvalidRequest,
    "off_grid": InvalidRequest,
    "start_in_past": InvalidRequest,
    "plan_limit_reached": LimitReached,
    "too_far": SlotUnavailable,
    "outside_hours": SlotUnavailable,
    "slot_taken": SlotUnavailable,
    "illegal_status_change": IllegalTransition,
    "not_due_yet": IllegalTransition,
    "cancel_not_allowed": Conflict,
    "cancel_window_passed": Conflict,
    "reschedule_not_allowed": Conflict,
    "reschedule_window_passed": Conflict,
    "appointment_not_found": NotFound,
}

# The state machine as the model knows it, written out rather than imported from core.booking.
STATUS_ACTIONS = {
    "confirm": "confirmed",
    "start": "in_progress",
    "complete": "completed",
    "mark_no_show": "no_show",
}
LEGAL = {
    "scheduled": {"confirmed", "in_progress", "completed", "cancelled", "no_show"},
    "confirmed": {"in_progress", "completed", "cancelled", "no_show"},
    "in_progress": {"completed"},
}
# Statuses whose appointment still holds its resources; the others (cancelled, completed, no_show) freed them.
HOLDING = {"scheduled", "confirmed", "in_progress"}
# Statuses that do not use up the plan's monthly allowance.
NOT_COUNTED = {"cancelled", "rescheduled"}


@dataclass
class ModelClient:
    phone: str | None
    email: str | None
    bookings: int = 1
    id: uuid.UUID | None = None  # learnt from the first booking
    recounts: int = 0  # cancellations and moves that changed its last_appointment_date, each one audit row

    @property
    def channels(self) -> list[str]:
        # A new client's preferences are "email if given, SMS if a phone is given".
        return [channel for channel, contact in (("email", self.email), ("sms", self.phone)) if contact]


@dataclass
class ModelAppointment:
    # Every instant of the model is in UTC: arithmetic on a local datetime follows the wall clock, and the
    # wall clock skips an hour on 28 March.
    id: uuid.UUID
    client: ModelClient
    start: datetime
    status: str
    status_changed_at: datetime
    resources: tuple[uuid.UUID, ...]
    updates: int = 0  # UPDATEs of its row, each one audit row
    # The channels of each appointment_confirmed event queued (the booking's, one per move, the business's
    # confirmation), as the client could be reached then.
    confirmations: list[tuple[str, ...]] = field(default_factory=list)
    cancellation_channels: tuple[str, ...] = ()
    cancellation_reason: str | None = None


APPOINTMENTS = text(
    "SELECT id, client_id, status, scheduled_start, scheduled_end, status_changed_at, cancellation_reason"
    " FROM appointments WHERE tenant_id = :tenant"
)
ACTIVE_ALLOCATIONS = text(
    "SELECT appointment_id, resource_id, lower(allocated_during) AS lower, upper(allocated_during) AS upper,"
    " units, exclusive FROM appointment_resources WHERE tenant_id = :tenant AND active"
)
# Pairs of active allocations of one capacity-1 resource whose occupied times overlap.
DOUBLE_BOOKINGS = text(
    "SELECT count(*) FROM appointment_resources a"
    " JOIN appointment_resources b ON b.resource_id = a.resource_id AND b.id > a.id AND b.active"
    "  AND b.allocated_during && a.allocated_during"
    " JOIN resources r ON r.id = a.resource_id"
    " WHERE a.tenant_id = :tenant AND a.active AND coalesce(r.capacity, 1) = 1"
)
# Instants at which a shared resource holds more units than it has: the most units are in use at the
# start of some allocation, so looking at every allocation's start is enough.
OVER_CAPACITY = text(
    "SELECT count(*) FROM appointment_resources a JOIN resources r ON r.id = a.resource_id"
    " WHERE a.tenant_id = :tenant AND a.active AND coalesce(r.capacity, 1) > 1"
    " AND (SELECT sum(b.units) FROM appointment_resources b WHERE b.resource_id = a.resource_id AND b.active"
    "      AND b.allocated_during @> lower(a.allocated_during)) > r.capacity"
)
CLIENTS = text(
    "SELECT id, phone, email, total_appointments, last_appointment_date FROM clients WHERE tenant_id = :tenant"
)
NOTIFICATIONS = text(
    "SELECT appointment_id, notification_type, channel, status, count(*) AS n FROM notifications"
    " WHERE tenant_id = :tenant GROUP BY 1, 2, 3, 4"
)
AUDIT = text(
    "SELECT table_name, record_id, action, count(*) AS n FROM audit_logs"
    " WHERE tenant_id = :tenant AND table_name IN ('appointments', 'clients') GROUP BY 1, 2, 3"
)
# The appointments that use up the plan's allowance, per local month of the salon.
MONTHLY_COUNTS = text(
    "SELECT date_trunc('month', scheduled_start AT TIME ZONE :zone) AS month, count(*) AS n FROM appointments"
    " WHERE tenant_id = :tenant AND deleted_at IS NULL AND status NOT IN ('cancelled', 'rescheduled')"
    " GROUP BY 1"
)

stylist_choice = st.none() | st.integers(0, 2)


class BookingLifecycle(RuleBasedStateMachine):
    appointments = Bundle("appointments")

    def __init__(self, db):
        super().__init__()
        self.db = db
        # Everything this example writes, the salon included, is rolled back in teardown(): the next
        # example starts from an empty database (but for the migrations), not just from another tenant.
        self.savepoint = db.begin_nested()
        self.now = START
        self.model: dict[uuid.UUID, ModelAppointment] = {}
        self.clients: list[ModelClient] = []

    def teardown(self):
        self.savepoint.rollback()

    # --- the salon -------------------------------------------------------------------------------------

    @initialize(
        stylists=st.integers(1, 3),
        chairs=st.integers(0, 1),
        # A shared resource (capacity, units a haircut takes), or none.
        basin=st.sampled_from([None, (2, 1), (3, 2)]),
        buffer=st.sampled_from([0, 10]),
        requires_confirmation=st.booleans(),
        allows_cancellation=st.sampled_from([True] * 5 + [False]),
        policy_hours=st.sampled_from([24, 2]),
        plan_limit=st.sampled_from([None, None, 2, 4]),
    )
    def open_salon(
        self,
        stylists,
        chairs,
        basin,
        buffer,
        requires_confirmation,
        allows_cancellation,
        policy_hours,
        plan_limit,
    ):
        db = self.db
        self.salon = build_salon(
            db,
            stylists=stylists,
            chairs=chairs,
            duration_minutes=int(DURATION.total_seconds() // 60),
            buffer_time_minutes=buffer,
            opens=OPENS.strftime("%H:%M"),
            closes=CLOSES.strftime("%H:%M"),
            requires_confirmation=requires_confirmation,
            allows_cancellation=allows_cancellation,
            cancellation_policy_hours=policy_hours,
        )
        self.buffer = timedelta(minutes=buffer)
        self.policy = timedelta(hours=policy_hours)
        self.allows_cancellation = allows_cancellation
        self.requires_confirmation = requires_confirmation
        self.initial_status = "scheduled" if requires_confirmation else "confirmed"
        self.plan_limit = plan_limit
        self.stylist_ids = [stylist.id for stylist in self.salon.stylists]  # in preference order
        self.capacity = {resource.id: 1 for resource in self.salon.stylists + self.salon.chairs}
        self.units = dict.fromkeys(self.capacity, 1)
        self.required_ids = [chair.id for chair in self.salon.chairs]
        if basin is not None:
            capacity, units = basin
            shared = factories.make_resource(db, self.salon.tenant, "equipment", capacity, name="Wash basins")
            factories.link_service_resource(
                db, self.salon.haircut, shared, is_required=True, quantity_required=units
            )
            for day in EVERY_DAY:
                factories.make_schedule(db, shared, day, OPENS, CLOSES)
            self.capacity[shared.id], self.units[shared.id] = capacity, units
            self.required_ids.append(shared.id)
        if plan_limit is not None:
            plan = factories.make_plan(db, max_appointments_per_month=plan_limit)
            factories.make_subscription(db, self.salon.tenant, plan, status="active")
        for kind in ("appointment_confirmed", "appointment_cancelled"):
            for channel in ("email", "sms"):
                factories.make_notification_template(
                    db,
                    self.salon.tenant,
                    type=kind,
                    channel=channel,
                    locale="es",
                    subject_template=f"{kind} {{{{ booking_reference }}}}" if channel == "email" else None,
                    body_template="{{ client_name }}: {{ appointment_date }} {{ appointment_time }}",
                )

    # --- what the model says -----------------------------------------------------------------------------

    def _occupied(self, start: datetime) -> tuple[datetime, datetime]:
        return start, start + DURATION + self.buffer

    def _has_room(self, resource_id, start: datetime, moving: ModelAppointment | None) -> bool:
        low, high = self._occupied(start)
        in_use = sum(
            self.units[resource_id]
            for other in self.model.values()
            if other is not moving
            and other.status in HOLDING
            and resource_id in other.resources
            and other.start < high
            and low < self._occupied(other.start)[1]
        )
        return in_use + self.units[resource_id] <= self.capacity[resource_id]

    def _slot(self, start: datetime, stylist, moving=None) -> tuple[str, tuple[uuid.UUID, ...]]:
        """What allocating a slot gives: "ok" and the resources, or the code of the refusal."""
        if start > self.now + MAX_ADVANCE:
            return "too_far", ()
        local, local_end = start.astimezone(self.salon.zone), (start + DURATION).astimezone(self.salon.zone)
        # The appointment (not its buffer) lies within the opening hours on the wall clock.
        if local.date() != local_end.date() or local.time() < OPENS or local_end.time() > CLOSES:
            return "outside_hours", ()
        if not all(self._has_room(resource_id, start, moving) for resource_id in self.required_ids):
            return "slot_taken", ()
        # The client's choice, else the first free stylist in preference order.
        for candidate in [stylist] if stylist else self.stylist_ids:
            if self._has_room(candidate, start, moving):
                return "ok", tuple(sorted([*self.required_ids, candidate]))
        return "slot_taken", ()

    def _month_is_full(self, start: datetime, moving=None) -> bool:
        month = start.astimezone(self.salon.zone).strftime("%Y-%m")
        if self.plan_limit is None:
            return False
        if moving is not None and moving.start.astimezone(self.salon.zone).strftime("%Y-%m") == month:
            return False  # a move within its month adds nothing to it
        used = sum(
            1
            for other in self.model.values()
            if other is not moving
            and other.status not in NOT_COUNTED
            and other.start.astimezone(self.salon.zone).strftime("%Y-%m") == month
        )
        return used >= self.plan_limit

    def _find_client(self, phone: str | None, email: str | None) -> tuple[ModelClient | None, str | None]:
        """The returning client, or None and the email a new client gets. The phone identifies a caller
        first; an email already used by a client with another phone is someone else's (a family's)."""
        for client in self.clients:
            if phone is not None and client.phone == phone:
                return client, email
        for client in self.clients:
            if email is not None and client.email == email:
                if phone is not None and client.phone not in (None, phone):
                    return None, None
                return client, email
        return None, email

    def _stylist(self, choice: int | None):
        return None if choice is None else self.stylist_ids[choice % len(self.stylist_ids)]

    # --- calling the code --------------------------------------------------------------------------------

    def _call(self, operation):
        """Run one operation in its own unit of work, committed when it succeeds. A DomainError is an
        answer; any other exception is a bug and fails the test."""
        with UnitOfWork(self.salon.tenant.id) as uow:
            try:
                result = operation(uow)
            except DomainError as error:
                return None, error
            uow.commit()
        return result, None

    def _check_outcome(self, what: str, error: DomainError | None, expected: str, moving=None, stylist=None):
        got = "ok" if error is None else error.code
        detail = "" if error is None else f": {error.message}"
        assert got == expected, (
            f"{what} at now={self.now.isoformat()}: expected {expected}, got {got}{detail}"
        )
        if error is not None:
            assert type(error) is ERROR_CLASSES[expected], f"{expected} raised as {type(error).__name__}"
        if isinstance(error, SlotUnavailable):
            # The alternatives offered instead must be bookable as offered.
            for alternative in error.details["alternatives"]:
                start = datetime.fromisoformat(alternative["start"])
                offered = tuple(sorted(uuid.UUID(r) for r in alternative["resource_ids"]))
                outcome, resources = self._slot(start, stylist, moving)
                assert start > self.now, f"alternative {alternative['start']} is before now={self.now}"
                assert (outcome, resources) == ("ok", offered), (
                    f"alternative {alternative} for {what}: the model says {outcome} {resources}"
                )

    # --- rules -------------------------------------------------------------------------------------------

    @rule(
        target=appointments,
        day=st.sampled_from(DAYS),
        clock=st.sampled_from(CLOCKS),
        phone=st.sampled_from([*PHONES, None, BAD_PHONE]),
        email=st.sampled_from([*EMAILS, None]),
        stylist=stylist_choice,
        off_grid=st.sampled_from([False] * 9 + [True]),
    )
    def book(self, day, clock, phone, email, stylist, off_grid):
        start = self.salon.at(day, clock) + timedelta(minutes=7 if off_grid else 0)
        return self._book(start.astimezone(UTC), phone, email, self._stylist(stylist))

    @rule(
        target=appointments,
        other=appointments,
        shift=st.sampled_from([-30, -15, 0, 15, 30]),
        phone=st.sampled_from(list(PHONES)),
        stylist=stylist_choice,
    )
    def book_next_to(self, other, shift, phone, stylist):
        """A booking close to (or on) another one's time: the collisions the random grid seldom draws."""
        start = self.model[other].start + timedelta(minutes=shift)
        return self._book(start, phone, None, self._stylist(stylist))

    def _book(self, start: datetime, phone: str | None, email: str | None, stylist):
        if phone == BAD_PHONE:
            expected, resources = "invalid_phone", ()
        elif phone is None and email is None:
            expected, resources = "contact_required", ()
        elif start.astimezone(self.salon.zone).minute % GRID:
            expected, resources = "off_grid", ()
        elif start <= self.now:
            expected, resources = "start_in_past", ()
        elif self._month_is_full(start):
            expected, resources = "plan_limit_reached", ()
        else:
            expected, resources = self._slot(start, stylist)

        request = BookingRequest(
            service_id=self.salon.haircut.id,
            start=start,
            client=ClientDetails("Lucía", "Martín", phone=phone, email=email),
            resource_ids=(stylist,) if stylist else (),
        )
        booked, error = self._call(lambda uow: booking.book(uow, request, self.now))
        self._check_outcome(f"book {start.isoformat()}", error, expected, stylist=stylist)
        if error is not None:
            return multiple()

        assert (booked.status, booked.start, booked.end, booked.resource_ids) == (
            self.initial_status,
            start,
            start + DURATION,
            resources,
        )
        phone, email = PHONES.get(phone), EMAILS.get(email)
        client, email = self._find_client(phone, email)
        client_id = self.db.execute(
            text("SELECT client_id FROM appointments WHERE id = :id"), {"id": booked.appointment_id}
        ).scalar_one()
        if client is None:
            client = ModelClient(phone, email, id=client_id)
            self.clients.append(client)
        else:
            assert client_id == client.id, "a returning client was not recognised"
            client.bookings += 1  # and nothing else of the client changes: the contacts on file stay
        self.model[booked.appointment_id] = ModelAppointment(
            booked.appointment_id,
            client,
            start,
            self.initial_status,
            self.now,
            resources,
            confirmations=[tuple(client.channels)],
        )
        return booked.appointment_id

    @rule(
        appointment=appointments,
        day=st.sampled_from(DAYS),
        clock=st.sampled_from(CLOCKS),
        stylist=stylist_choice,
    )
    def reschedule(self, appointment, day, clock, stylist):
        self._reschedule(
            self.model[appointment], self.salon.at(day, clock).astimezone(UTC), self._stylist(stylist)
        )

    @rule(appointment=appointments, shift=st.sampled_from([-60, -30, -15, 0, 15, 30, 60]))
    def reschedule_nearby(self, appointment, shift):
        """A move onto or across its own time: the old allocation must not stand in the way."""
        moving = self.model[appointment]
        self._reschedule(moving, moving.start + timedelta(minutes=shift), None)

    @rule(
        appointment=appointments,
        other=appointments,
        shift=st.sampled_from([-15, 0, 15]),
        stylist=stylist_choice,
    )
    def reschedule_next_to(self, appointment, other, shift, stylist):
        """A move onto (or close to) another appointment's time: the collisions of moves."""
        start = self.model[other].start + timedelta(minutes=shift)
        self._reschedule(self.model[appointment], start, self._stylist(stylist))

    def _reschedule(self, moving: ModelAppointment, start: datetime, stylist):
        # Two moves of one appointment at the same `now` are allowed to happen here: each queues its own
        # confirmation.
        if moving.status not in ("scheduled", "confirmed"):
            expected, resources = "illegal_status_change", ()
        elif start == moving.start and (stylist is None or stylist in moving.resources):
            # Already there: nothing changes, whatever the window or the clock say now.
            moved, error = self._call(
                lambda uow: booking.reschedule(uow, moving.id, start, self.now, (stylist,) if stylist else ())
            )
            self._check_outcome(f"reschedule to {start.isoformat()}", error, "ok", moving, stylist)
            assert (moved.status, moved.start, moved.resource_ids) == (moving.status, start, moving.resources)
            return
        elif not self.allows_cancellation:
            expected, resources = "reschedule_not_allowed", ()
        elif moving.start - self.now < self.policy:
            expected, resources = "reschedule_window_passed", ()
        elif start <= self.now:
            expected, resources = "start_in_past", ()
        elif self._month_is_full(start, moving):
            expected, resources = "plan_limit_reached", ()
        elif stylist is not None:
            expected, resources = self._slot(start, stylist, moving)
        else:
            # The stylist is kept when free at the new time; otherwise any free one, as for a booking.
            current = next(r for r in moving.resources if r in self.stylist_ids)
            expected, resources = self._slot(start, current, moving)
            if expected != "ok":
                expected, resources = self._slot(start, None, moving)

        moved, error = self._call(
            lambda uow: booking.reschedule(uow, moving.id, start, self.now, (stylist,) if stylist else ())
        )
        self._check_outcome(f"reschedule to {start.isoformat()}", error, expected, moving, stylist)
        if error is not None:
            return
        if self.requires_confirmation and moving.status == "confirmed":
            # The business confirmed the old time, not the new one.
            moving.status, moving.status_changed_at = "scheduled", self.now
        assert (moved.status, moved.start, moved.end, moved.resource_ids) == (
            moving.status,
            start,
            start + DURATION,
            resources,
        )
        latest = self._latest(moving.client)
        moving.start, moving.resources = start, resources
        moving.updates += 1
        moving.confirmations.append(tuple(moving.client.channels))
        moving.client.recounts += latest != self._latest(moving.client)

    @rule(appointment=appointments, reason=st.sampled_from(["Client is ill", None]))
    def cancel(self, appointment, reason):
        self._cancel(self.model[appointment], reason)

    @rule(appointment=appointments, margin=st.sampled_from([-15, 0, 15]))
    def cancel_near_the_deadline(self, appointment, margin):
        """Time moves to just before, exactly at or just after the last moment the policy allows."""
        cancelled = self.model[appointment]
        self.now = max(self.now, cancelled.start - self.policy + timedelta(minutes=margin))
        self._cancel(cancelled, "Changed my mind")

    def _cancel(self, cancelled: ModelAppointment, reason: str | None):
        if cancelled.status == "cancelled":
            # A repeated cancellation is answered with the appointment as it is: nothing changes.
            result, error = self._call(lambda uow: booking.cancel(uow, cancelled.id, reason, self.now))
            self._check_outcome("cancel", error, "ok")
            assert result.status == "cancelled"
            return
        if cancelled.status not in ("scheduled", "confirmed"):
            expected = "illegal_status_change"
        elif not self.allows_cancellation:
            expected = "cancel_not_allowed"
        elif cancelled.start - self.now < self.policy:
            expected = "cancel_window_passed"
        else:
            expected = "ok"
        result, error = self._call(lambda uow: booking.cancel(uow, cancelled.id, reason, self.now))
        self._check_outcome("cancel", error, expected)
        if error is None:
            assert result.status == "cancelled"
            latest = self._latest(cancelled.client)
            cancelled.status, cancelled.status_changed_at = "cancelled", self.now
            cancelled.client.recounts += latest != self._latest(cancelled.client)
            cancelled.cancellation_reason = reason
            cancelled.cancellation_channels = tuple(cancelled.client.channels)
            cancelled.updates += 1

    @rule(
        appointment=appointments,
        action=st.sampled_from(sorted(STATUS_ACTIONS)),
        offset=st.sampled_from([-61, -60, -15, 0, 30]),
    )
    def change_status_near_its_time(self, appointment, action, offset):
        """Time moves to around the appointment's start (an hour before is the earliest start)."""
        self.now = max(self.now, self.model[appointment].start + timedelta(minutes=offset))
        self._change_status(self.model[appointment], action)

    @rule(appointment=appointments, action=st.sampled_from(sorted(STATUS_ACTIONS)))
    def change_status(self, appointment, action):
        self._change_status(self.model[appointment], action)

    def _change_status(self, changed: ModelAppointment, action: str):
        target = STATUS_ACTIONS[action]
        expected = "ok" if target in LEGAL.get(changed.status, set()) else "illegal_status_change"
        if expected == "ok" and target in ("completed", "no_show") and changed.status != "in_progress":
            # Not before it was due: one started may end early, one to come may not be written off.
            expected = "ok" if self.now >= changed.start else "not_due_yet"
        if expected == "ok" and target == "in_progress" and self.now < changed.start - timedelta(hours=1):
            # A client may be seen up to an hour early, not sooner.
            expected = "not_due_yet"
        result, error = self._call(lambda uow: getattr(booking, action)(uow, changed.id, self.now))
        self._check_outcome(f"{action} a {changed.status} appointment", error, expected)
        if error is None:
            assert result.status == target
            # Only while it holds them: for a released appointment the result names the allocations of its
            # last booking or move, told apart by created_at, the transaction's start, which is the same for
            # every row under the `db` fixture (one transaction). Not so in production.
            if target in HOLDING:
                assert result.resource_ids == changed.resources
            changed.status, changed.status_changed_at = target, self.now
            changed.updates += 1
            # The business's confirmation is news to the client: it replaces "request received".
            if target == "confirmed":
                changed.confirmations.append(tuple(changed.client.channels))

    # Only once something is booked: before that, Hypothesis would spend a third of the steps here.
    @precondition(lambda self: self.model)
    @rule(action=st.sampled_from(["cancel", "reschedule", *sorted(STATUS_ACTIONS)]))
    def act_on_a_missing_appointment(self, action):
        missing = uuid.uuid4()
        operations = {
            "cancel": lambda uow: booking.cancel(uow, missing, None, self.now),
            "reschedule": lambda uow: booking.reschedule(
                uow, missing, self.now + timedelta(days=2), self.now
            ),
        }
        operation = operations.get(action) or (lambda uow: getattr(booking, action)(uow, missing, self.now))
        _, error = self._call(operation)
        self._check_outcome(f"{action} a missing appointment", error, "appointment_not_found")

    # Mostly small steps: a day at a time, the few days bookings fall on are soon all in the past.
    @rule(minutes=st.sampled_from([15, 15, 60, 60, 4 * 60, 24 * 60]))
    def advance(self, minutes):
        self.now += timedelta(minutes=minutes)

    # --- invariants --------------------------------------------------------------------------------------

    @invariant()
    def the_database_agrees_with_the_model(self):
        # All the reads of a step in one system-mode unit of work (the test's view of every row, as the `db`
        # session has it): one snapshot, and a failing sequence then lists one invariant per step, not seven.
        with UnitOfWork(system=True) as reading:

            def read(statement, **parameters):
                return reading.session.execute(
                    statement, {"tenant": self.salon.tenant.id, **parameters}
                ).all()

            self.appointments_are_as_modelled(read)
            self.allocations_are_held_exactly_while_the_appointment_is_live(read)
            self.no_resource_is_double_booked_or_over_capacity(read)
            self.clients_are_found_again_and_counted(read)
            self.notifications_follow_the_appointment(read)
            self.every_change_is_in_the_audit_trail(read)
            self.the_plans_monthly_limit_holds(read)

    def appointments_are_as_modelled(self, read):
        rows = {row.id: row for row in read(APPOINTMENTS)}
        # A refused booking leaves no appointment behind, a successful one exactly one.
        assert rows.keys() == self.model.keys()
        for expected in self.model.values():
            row = rows[expected.id]
            assert (
                row.status,
                row.scheduled_start,
                row.scheduled_end,
                row.status_changed_at,
                row.client_id,
                row.cancellation_reason,
            ) == (
                expected.status,
                expected.start,
                expected.start + DURATION,
                expected.status_changed_at,
                expected.client.id,
                expected.cancellation_reason,
            ), f"appointment {expected}"

    def allocations_are_held_exactly_while_the_appointment_is_live(self, read):
        actual = Counter(
            (row.appointment_id, row.resource_id, row.lower, row.upper, row.units, row.exclusive)
            for row in read(ACTIVE_ALLOCATIONS)
        )
        expected = Counter(
            (appointment.id, resource_id, *self._occupied(appointment.start), self.units[resource_id],
             self.capacity[resource_id] == 1)
            for appointment in self.model.values()
            if appointment.status in HOLDING
            for resource_id in appointment.resources
        )  # fmt: skip
        assert actual == expected
        # Every live appointment holds every required resource and exactly one stylist.
        held: dict[uuid.UUID, set] = {}
        for appointment_id, resource_id, *_ in actual:
            held.setdefault(appointment_id, set()).add(resource_id)
        for resources in held.values():
            assert set(self.required_ids) <= resources
            assert len(resources & set(self.stylist_ids)) == 1

    def no_resource_is_double_booked_or_over_capacity(self, read):
        assert read(DOUBLE_BOOKINGS)[0][0] == 0
        assert read(OVER_CAPACITY)[0][0] == 0

    def _latest(self, client: ModelClient) -> datetime | None:
        """The client's last_appointment_date: the latest start of its appointments not cancelled."""
        starts = [a.start for a in self.model.values() if a.client is client and a.status not in NOT_COUNTED]
        return max(starts, default=None)

    def clients_are_found_again_and_counted(self, read):
        # A refused booking leaves no client behind; a returning one is not duplicated. Every booking made
        # is counted; the latest appointment follows moves and cancellations.
        actual = {
            row.id: (row.phone, row.email, row.total_appointments, row.last_appointment_date)
            for row in read(CLIENTS)
        }
        assert actual == {
            client.id: (client.phone, client.email, client.bookings, self._latest(client))
            for client in self.clients
        }

    def notifications_follow_the_appointment(self, read):
        """Each booking and move queued its confirmation on each channel, and only the latest is pending;
        a cancellation withdrew it and queued the notice of cancellation. Nothing else was written."""
        actual = Counter({(row.appointment_id, row.notification_type, row.channel, row.status): row.n
                          for row in read(NOTIFICATIONS)})  # fmt: skip
        expected: Counter = Counter()
        for appointment in self.model.values():
            *earlier, latest = appointment.confirmations
            for channels, status in [*((channels, "cancelled") for channels in earlier), (latest, "pending")]:
                if appointment.status == "cancelled":
                    status = "cancelled"
                for channel in channels:
                    expected[(appointment.id, "appointment_confirmed", channel, status)] += 1
            for channel in appointment.cancellation_channels:
                expected[(appointment.id, "appointment_cancelled", channel, "pending")] += 1
        assert +actual == +expected

    def every_change_is_in_the_audit_trail(self, read):
        actual = Counter({(row.table_name, row.record_id, row.action): row.n for row in read(AUDIT)})
        expected: Counter = Counter()
        for appointment in self.model.values():
            expected[("appointments", appointment.id, "CREATE")] += 1
            expected[("appointments", appointment.id, "UPDATE")] += appointment.updates
        for client in self.clients:
            expected[("clients", client.id, "CREATE")] += 1
            # A returning client's booking is counted on its row, and so is a change of its latest appointment.
            expected[("clients", client.id, "UPDATE")] += client.bookings - 1 + client.recounts
        assert +actual == +expected

    def the_plans_monthly_limit_holds(self, read):
        if self.plan_limit is not None:
            for row in read(MONTHLY_COUNTS, zone=self.salon.tenant.timezone):
                assert row.n <= self.plan_limit, f"{row.n} appointments in {row.month:%Y-%m}"


# Few examples of many steps: building a salon costs about as much as twenty steps, and the interesting
# sequences (a move into a slot a cancellation freed, a full month, ...) need several steps to arise.
# 9-12 s on the shared 2-core machine (11-17 s for the file, with the test database's migration). To hunt
# for bugs, run the machine with a few hundred examples and derandomize=False.
LIFECYCLE_SETTINGS = settings(
    max_examples=16,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    database=None,
    # The steps run while Hypothesis generates the sequence, so the database's work counts as "generation".
    suppress_health_check=[HealthCheck.too_slow],
)


def test_the_booking_lifecycle_keeps_its_invariants(db):
    # The `db` fixture is one connection in one transaction for the whole test, shared by every example.
    # That is safe because each example makes its own tenant inside a savepoint that it rolls back in
    # teardown. (run_state_machine_as_test is not @given: the function-scoped-fixture health check does
    # not apply.)
    run_state_machine_as_test(lambda: BookingLifecycle(db), settings=LIFECYCLE_SETTINGS)


# --- regressions ---------------------------------------------------------------------------------------


def _book(salon, start, phone, now):
    request = BookingRequest(salon.haircut.id, start, ClientDetails("Ana", phone=phone))
    with UnitOfWork(salon.tenant.id) as uow:
        booked = booking.book(uow, request, now)
        uow.commit()
    return booked


@pytest.mark.parametrize("before", sorted({*LEGAL, "completed", "cancelled", "no_show"}))
def test_every_status_change_is_made_or_refused_as_the_table_says(db, before):
    # The machine's fixed sample can miss a pair (in_progress -> no_show made legal slipped through): every
    # pair, from each status, once.
    salon = build_salon(db, stylists=1, chairs=1)
    booked = _book(
        salon, salon.at(date(2027, 3, 3), "10:00"), "612 345 678", datetime(2027, 3, 1, tzinfo=UTC)
    )
    db.execute(
        text("UPDATE appointments SET status = :status WHERE id = :id"),
        {"status": before, "id": booked.appointment_id},
    )
    due = salon.at(date(2027, 3, 3), "10:30")
    for action, after in STATUS_ACTIONS.items():
        # Never committed: each change starts from `before`.
        with UnitOfWork(salon.tenant.id) as uow:
            if after in LEGAL.get(before, set()):
                assert getattr(booking, action)(uow, booked.appointment_id, due).status == after
            else:
                with pytest.raises(IllegalTransition) as refused:
                    getattr(booking, action)(uow, booked.appointment_id, due)
                assert refused.value.code == "illegal_status_change", (before, after)


# Found by the machine, shrunk by hand: an alternative starting at `now` itself was offered and then refused
# as start_in_past (fixed in core.availability, commit 0f17030).
def test_an_alternative_is_never_in_the_past(db):
    salon = build_salon(db, stylists=1, chairs=1)  # min_advance_booking_hours=0
    day = date(2027, 3, 3)
    now = salon.at(day, "10:00")
    _book(salon, salon.at(day, "10:45"), "612 345 678", datetime(2027, 3, 1, 7, 0, tzinfo=UTC))
    with pytest.raises(SlotUnavailable) as taken:
        _book(salon, salon.at(day, "10:45"), "611 111 111", now)
    # 10:00 (= now) is free too, but already past for whoever would book it.
    offered = [datetime.fromisoformat(slot["start"]) for slot in taken.value.details["alternatives"]]
    assert offered and all(start > now for start in offered)
    # Each alternative can be booked at the same `now` (each on its own: they overlap one another).
    for start in offered:
        with UnitOfWork(salon.tenant.id) as uow:
            booking.book(
                uow, BookingRequest(salon.haircut.id, start, ClientDetails("B", phone="622222222")), now
            )


# Found by reading core/booking.py; the machine books 09:00-18:00 only, where no clock change happens.
def test_an_appointment_across_the_clock_change_ends_when_its_allocation_does(db):
    # Madrid's clocks go from 02:00 to 03:00 on 28 March 2027; a 2-hour appointment at 01:30 (+01:00)
    # ends at 04:30 (+02:00), 02:30 UTC.
    salon = build_salon(db, stylists=2, chairs=0, duration_minutes=120, opens="00:00", closes="23:45")
    now = datetime(2027, 3, 20, 7, 0, tzinfo=UTC)
    night = salon.at(date(2027, 3, 28), "01:30")
    booked = _book(salon, night, "612 345 678", now)
    moved = _book(salon, salon.at(date(2027, 3, 27), "10:00"), "611 111 111", now)
    with UnitOfWork(salon.tenant.id) as uow:
        booking.reschedule(uow, moved.appointment_id, night, now)
        uow.commit()

    for appointment_id in (booked.appointment_id, moved.appointment_id):
        start, end, allocated_until = db.execute(
            text(
                "SELECT a.scheduled_start, a.scheduled_end, max(r.allocated_end) FROM appointments a"
                " JOIN appointment_resources r ON r.appointment_id = a.id AND r.active"
                " WHERE a.id = :id GROUP BY a.id"
            ),
            {"id": appointment_id},
        ).one()
        assert start.astimezone(UTC) == datetime(2027, 3, 28, 0, 30, tzinfo=UTC)
        assert (
            end.astimezone(UTC) == allocated_until.astimezone(UTC) == datetime(2027, 3, 28, 2, 30, tzinfo=UTC)
        )
