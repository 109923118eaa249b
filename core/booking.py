"""Booking, rescheduling, cancelling and the appointment's life cycle.

Allocation (DESIGN §5, refined in `_allocate`): the slot is checked against the rows as they are now
and every resource is inserted at once. The exclusion constraint on appointment_resources serialises
bookings of one resource whose times overlap, and only those; its violation becomes `slot_taken` (after
looking again), never a 500. Resources of capacity > 1 are counted under an advisory lock per resource and
day (`_lock_shared_resources`). The locks others may wait for (the plan's count, a returning client's count)
are taken last, just before the commit.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import MAXYEAR, UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, select, text, tuple_, update
from sqlalchemy.exc import DBAPIError

from core import availability, clients, notifications, plans
from core.availability import Slot
from core.clients import ClientDetails
from core.db import UnitOfWork
from core.errors import (
    Conflict,
    IllegalTransition,
    InvalidRequest,
    LimitReached,
    SlotUnavailable,
    inactive_service,
    off_grid,
    resource_not_eligible,
    several_interchangeable,
    start_without_offset,
)
from core.models import (
    Appointment,
    AppointmentResource,
    Client,
    Resource,
    Service,
    ServiceResource,
    Tenant,
)

ALTERNATIVES = 3

# Readable over the phone: no 0/O, 1/I/L, 5/S or 8/B to confuse.
REFERENCE_ALPHABET = "234679ACDEFGHJKMNPQRTUVWXYZ"
REFERENCE_LENGTH = 6
REFERENCE_ATTEMPTS = 5

# The one state machine: status -> the statuses it may change to.
TRANSITIONS: dict[str, set[str]] = {
    "scheduled": {"confirmed", "in_progress", "completed", "cancelled", "no_show"},
    "confirmed": {"in_progress", "completed", "cancelled", "no_show"},
    "in_progress": {"completed"},
    "completed": set(),
    "cancelled": set(),
    "no_show": set(),
    # The seed's status for a moved appointment. A move here changes the appointment in place and never
    # sets it; a row in it (from an import) is final.
    "rescheduled": set(),
}
# Statuses whose allocation still holds the resources.
HOLDING_STATUSES = {"scheduled", "confirmed", "in_progress"}
# Statuses an appointment may be moved (rescheduled) from.
MOVABLE_STATUSES = ("scheduled", "confirmed")
# A client who comes early may be seen early; a start recorded further ahead is a slip of the finger
# (tomorrow's appointment started today), which would also let it be completed before it was due.
EARLIEST_START = timedelta(hours=1)


@dataclass(frozen=True)
class BookingRequest:
    service_id: uuid.UUID
    start: datetime
    client: ClientDetails
    resource_ids: tuple[uuid.UUID, ...] = ()
    notes: str | None = None
    booking_method: str = "online"

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> BookingRequest:
        return cls(
            service_id=uuid.UUID(payload["service_id"]),
            start=datetime.fromisoformat(payload["start"]),
            client=ClientDetails(**payload["client"]),
            resource_ids=tuple(uuid.UUID(r) for r in payload.get("resource_ids") or ()),
            notes=payload.get("notes"),
            booking_method=payload.get("booking_method", "online"),
        )


@dataclass(frozen=True)
class BookedAppointment:
    appointment_id: uuid.UUID
    booking_reference: str
    status: str
    start: datetime
    end: datetime
    resource_ids: tuple[uuid.UUID, ...]
    timezone: str

    def as_dict(self) -> dict[str, Any]:
        zone = ZoneInfo(self.timezone)
        return {
            "appointment_id": str(self.appointment_id),
            "booking_reference": self.booking_reference,
            "status": self.status,
            "start": self.start.astimezone(zone).isoformat(),
            "end": self.end.astimezone(zone).isoformat(),
            "resource_ids": [str(r) for r in self.resource_ids],
        }


@dataclass(frozen=True)
class AppointmentView:
    """An appointment as the business and its client see it."""

    appointment: BookedAppointment
    service: dict[str, Any]
    client: dict[str, Any]
    resources: list[dict[str, Any]]
    quoted_price: Decimal | None
    currency: str | None
    booking_method: str | None
    client_notes: str | None
    cancellation_reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.appointment.as_dict(),
            "timezone": self.appointment.timezone,
            "service": self.service,
            "client": self.client,
            "resources": self.resources,
            "quoted_price": str(self.quoted_price) if self.quoted_price is not None else None,
            "currency": self.currency,
            "booking_method": self.booking_method,
            "client_notes": self.client_notes,
            "cancellation_reason": self.cancellation_reason,
        }


# --- validation shared by the API (before a job is accepted) and the worker ---------------------------


def _tenant(uow: UnitOfWork, tenant_id: uuid.UUID) -> Tenant:
    """The business, or NotFound("tenant_not_found") once it is deleted (a job may outlive it)."""
    return uow.get(Tenant, tenant_id, code="tenant_not_found", what="Business")


def _bookable_tenant(tenant: Tenant) -> Tenant:
    plans.check_bookable(tenant.name, tenant.subscription_status)
    return tenant


def _service_to_move(uow: UnitOfWork, appointment: Appointment) -> Service:
    """The appointment's service, if it still takes bookings. One switched off or retired since is refused
    as `service_inactive`: the client never named it, so "no such service" (a 404) would not tell them why."""
    service = uow.session.get(Service, appointment.service_id)
    if service.deleted_at is not None:
        raise inactive_service(service.name)
    return _bookable_service(service)


def _bookable_service(service: Service) -> Service:
    if not service.is_active:
        raise inactive_service(service.name)
    return service


def validate_request(uow: UnitOfWork, request: BookingRequest, now: datetime) -> None:
    """What can be said about a request without looking at the calendar: it is rejected before a job exists."""
    _validated_request(uow, request, now)


def _validated_request(
    uow: UnitOfWork, request: BookingRequest, now: datetime
) -> tuple[Tenant, Service, int | None, dict[uuid.UUID, LinkedResource]]:
    """The tenant, the service, the plan's monthly allowance (see `plans.allowance`) and the units each
    linked resource would give, once the request is valid."""
    # One round trip for the tenant, the service and the plan's monthly allowance, instead of three.
    row = uow.session.execute(
        _REQUEST_CONTEXT, {"tenant_id": uow.tenant_id, "service_id": request.service_id}
    ).one_or_none()
    tenant, service, limit = row if row is not None else (None, None, None)
    tenant = _bookable_tenant(
        uow.visible(Tenant, uow.tenant_id, tenant, code="tenant_not_found", what="Business")
    )
    service = _bookable_service(
        uow.visible(Service, request.service_id, service, code="service_not_found", what="Service")
    )
    clients.normalise(request.client, tenant)
    linked = _eligible_resources(uow, tenant, service, request.start, now, request.resource_ids)
    return tenant, service, plans.allowance(limit), linked


def validate_reschedule(
    uow: UnitOfWork,
    appointment_id: uuid.UUID,
    new_start: datetime,
    now: datetime,
    resource_ids: tuple[uuid.UUID, ...],
) -> None:
    """What can be said about a move without looking at the calendar: it is rejected before a job exists.
    A move to where the appointment already is is not refused here (whatever the business's standing, the
    service's or the clock's): `reschedule` answers it with the appointment as it is."""
    tenant = _tenant(uow, uow.tenant_id)
    appointment = uow.get(Appointment, appointment_id, code="appointment_not_found", what="Appointment")
    if appointment.status in MOVABLE_STATUSES and _already_there(uow, appointment, new_start, resource_ids):
        return
    _bookable_tenant(tenant)
    service = _service_to_move(uow, appointment)
    _eligible_resources(uow, tenant, service, new_start, now, resource_ids)


def _already_there(
    uow: UnitOfWork,
    appointment: Appointment,
    new_start: datetime,
    resource_ids: tuple[uuid.UUID, ...],
    held: tuple[uuid.UUID, ...] | None = None,
) -> bool:
    """Whether a move to `new_start` with `resource_ids` asks for what the appointment already has (its
    time, and resources it holds: `held`, read when not given)."""
    if new_start.tzinfo is None:
        return False
    try:
        same_time = _in_utc(new_start) == appointment.scheduled_start
    except OverflowError:  # 0001-01-01T00:00:00+01:00 and the like: not a usable date, refused later
        return False
    if not same_time:
        return False
    return set(resource_ids) <= set(_resources_held_by(uow, appointment) if held is None else held)


def _eligible_resources(
    uow: UnitOfWork,
    tenant: Tenant,
    service: Service,
    start: datetime,
    now: datetime,
    resource_ids: tuple[uuid.UUID, ...],
) -> dict[uuid.UUID, LinkedResource]:
    """The units each linked resource would give, once the start and the chosen resources are valid."""
    _check_start(tenant, start)
    if start <= now:
        raise InvalidRequest("The requested start is in the past.", code="start_in_past", field="start")
    linked = _linked_resources(uow, service)
    unknown = [r for r in resource_ids if r not in linked]
    if unknown:
        raise resource_not_eligible(unknown[0], service.name)
    if len({r for r in resource_ids if linked[r].interchangeable}) > 1:
        raise several_interchangeable()
    return linked


@dataclass(frozen=True)
class LinkedResource:
    """A resource linked to a service (`service_resources`): the capacity units one appointment takes of
    it, whether it holds one appointment at a time (capacity 1, guarded by the exclusion constraint), and
    whether it is one of several that can serve (a stylist) rather than needed by every appointment (the
    chair)."""

    units: int
    exclusive: bool
    interchangeable: bool


# The booking's hot statements are built once, with parameters: building one per call costs more
# Python time than PostgreSQL takes to run it.
_LINKED_RESOURCES = (
    select(
        ServiceResource.resource_id,
        ServiceResource.quantity_required,
        Resource.capacity,
        ServiceResource.is_required,
    )
    .join(Resource, Resource.id == ServiceResource.resource_id)
    .where(
        ServiceResource.service_id == bindparam("service_id"),
        Resource.tenant_id == bindparam("tenant_id"),
        Resource.is_active.is_(True),
        Resource.deleted_at.is_(None),
    )
)


def _linked_resources(uow: UnitOfWork, service: Service) -> dict[uuid.UUID, LinkedResource]:
    """Every resource that could serve the service."""
    links = uow.session.execute(_LINKED_RESOURCES, {"service_id": service.id, "tenant_id": service.tenant_id})
    return {
        resource_id: LinkedResource(
            units=quantity or 1, exclusive=(capacity or 1) == 1, interchangeable=is_required is False
        )
        for resource_id, quantity, capacity, is_required in links
    }


def _in_utc(start: datetime) -> datetime:
    # The same instant in UTC, where adding a duration adds elapsed time: on a datetime in a zone like
    # Europe/Madrid, Python adds wall-clock time, an hour off across a clock change. Checked starts only
    # (they carry an offset).
    return start.astimezone(UTC)


def _check_start(tenant: Tenant, start: datetime) -> None:
    if start.tzinfo is None:
        raise start_without_offset()
    step = availability.slot_step_minutes(tenant.settings)
    try:
        local = start.astimezone(ZoneInfo(tenant.timezone))
    except OverflowError:  # 0001-01-01T00:00:00+01:00 and the like
        raise InvalidRequest("The start is not a usable date.", code="invalid_start", field="start") from None
    if local.year == MAXYEAR:  # the calendar's last year: its local days cannot be stepped past
        raise InvalidRequest("The start is not a usable date.", code="invalid_start", field="start")
    minutes = local.hour * 60 + local.minute
    if local.second or local.microsecond or minutes % step:
        raise off_grid(f"{local:%H:%M}", step)


# --- booking ------------------------------------------------------------------------------------------


def book(uow: UnitOfWork, request: BookingRequest, now: datetime) -> BookedAppointment:
    tenant, service, limit, linked = _validated_request(uow, request, now)
    start = _in_utc(request.start)
    # A full month is refused before any work; the count that decides comes last (below).
    _refuse_if_month_full(uow, tenant, limit, start)
    client, new_client = clients.for_booking(uow, tenant, request.client, start)
    appointment = _insert_with_new_reference(
        uow,
        tenant_id=tenant.id,
        service_id=service.id,
        client_id=client.id,
        scheduled_start=start,
        scheduled_end=start + timedelta(minutes=service.duration_minutes),
        status="scheduled" if service.requires_confirmation else "confirmed",
        status_changed_at=now,
        booking_method=request.booking_method,
        quoted_price=service.base_price,
        client_notes=request.notes,
    )
    uow.session.flush()
    # Everything that does not need the resources happens before they are taken, so that a booking
    # competing for the same stylist waits only on the check and the insert. A taken slot rolls it all back.
    notifications.queue_for_appointment(uow, tenant, client, service, appointment, "appointment_confirmed")
    slot = _allocate(uow, service, appointment, start, now, request.resource_ids, linked)
    # Last, as what they lock (the client's row, the tenant's count) is then held only for the commit: the
    # same person's or, on a limited plan, the same business's next booking waits for that, not for all of this.
    if not new_client:
        clients.count_booking(uow, client, start)
    _lock_and_count_month(uow, tenant, limit, start, appointment.id)
    return _booked(appointment, slot.resource_ids, tenant)


# All of a slot's rows in one statement of fixed shape: a multi-row insert(...).values() is compiled anew
# for every booking (SQLAlchemy gives it no cache key). unnest keeps the arrays' order.
# `exclusive` is set by the database from the resource's capacity (revision 023).
_INSERT_ALLOCATIONS = text(
    "INSERT INTO appointment_resources (id, appointment_id, resource_id, allocated_start, allocated_end,"
    " allocated_during, active, units)"
    " SELECT id, :appointment_id, resource_id, :start, :end, tstzrange(:start, :occupied_until, '[)'), true,"
    " units"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:resource_ids AS uuid[]), CAST(:units AS integer[]))"
    " AS allocation (id, resource_id, units)"
)


def _allocate(
    uow: UnitOfWork,
    service: Service,
    appointment: Appointment,
    start: datetime,
    now: datetime,
    resource_ids: tuple[uuid.UUID, ...],
    linked: dict[uuid.UUID, LinkedResource],
    moving_from: Slot | None = None,
) -> Slot:
    """Allocate the resources for the slot at `start`, all or none. A move passes the appointment's
    current slot as `moving_from`: the alternatives of a refusal leave out the place it already has.

    Resources of capacity 1 are guarded by the exclusion constraint itself: two bookings wait for each
    other only when their times overlap on a resource, and the loser sees 23P01 and looks again (another
    stylist may still be free). Shared resources (capacity > 1) are counted, and counting is only
    safe one booking at a time among those that could overlap: see `_lock_shared_resources`.

    The insert of capacity-1 rows is taken one booking at a time per resource and day, under a lock held
    for the insert only. PostgreSQL checks the exclusion constraint after putting the row in the index, so
    two bookings inserting overlapping rows at once each found the other's row and waited for it: a
    deadlock, broken after a second by aborting one, which looked again, inserted again and met the next
    one. Twenty bookings racing for one slot went on like that for most of a minute. With the lock, a
    booking inserts only once the one before it has inserted and checked; it may then wait for that one's
    commit (while holding the lock, so the next ones queue), never in a cycle.
    """
    shared = sorted(resource_id for resource_id, resource in linked.items() if not resource.exclusive)
    if shared:
        duration = timedelta(minutes=service.duration_minutes + (service.buffer_time_minutes or 0))
        _lock_shared_resources(uow, shared, start, start + duration)
    # Each lost race means another booking took (or is taking) one of the linked resources, so the looks
    # are bounded by their number; twice that, for races lost to a deadlock's victim choice.
    for _ in range(2 * len(linked) + 2):
        try:
            slot = availability.check_slot(uow, service, start, now, resource_ids or None)
        except SlotUnavailable as unavailable:
            raise _with_alternatives(
                uow, service, appointment, start, now, resource_ids, unavailable, moving_from
            ) from None
        # Rows go in in id order, like the locks: two bookings never wait on each other in a cycle.
        resources = sorted(slot.resource_ids)
        if any(resource_id not in linked for resource_id in resources):
            # The business linked another resource to the service since this booking read its resources:
            # its units, and for a shared one its lock, are unknown here.
            raise Conflict(
                f"The resources of {service.name} were changed meanwhile; please try again.",
                code="service_changed",
            )
        allocations = {
            "ids": [uuid.uuid4() for _ in resources],
            "resource_ids": resources,
            "units": [linked[resource_id].units for resource_id in resources],
            "appointment_id": appointment.id,
            "start": slot.start,
            "end": slot.end,
            "occupied_until": slot.end + timedelta(minutes=service.buffer_time_minutes or 0),
        }
        exclusive = [resource_id for resource_id in resources if linked[resource_id].exclusive]
        keys = resource_day_keys(exclusive, slot.start, allocations["occupied_until"])
        try:
            # The savepoint keeps the transaction usable after a violation.
            with uow.locked_meanwhile(EXCLUSIVE_INSERT_LOCKS, keys), uow.session.begin_nested():
                uow.session.execute(_INSERT_ALLOCATIONS, allocations)
            return slot
        except DBAPIError as error:
            # 23P01: an overlapping booking of one of these resources committed first. 40P01: PostgreSQL
            # found this booking in a cycle of waits and aborted it (the insert lock leaves little room for
            # one: two keys whose hashes clash). Either way, look again.
            if getattr(error.orig, "sqlstate", None) not in ("23P01", "40P01"):
                raise
    taken = SlotUnavailable("That time was just taken.", code="slot_taken")
    raise _with_alternatives(uow, service, appointment, start, now, resource_ids, taken, moving_from)


# Transaction-level advisory locks (released at commit or rollback), in a key space of their own.
SHARED_RESOURCE_LOCKS = 0x56410001
# Held around the insert of capacity-1 allocations only (see `_allocate`).
EXCLUSIVE_INSERT_LOCKS = 0x56410002
# Per resource, shared by every writer of its allocations (revision 029's trigger takes it too) and taken
# exclusively by a change of its capacity, which so waits for the allocations being written.
CAPACITY_LOCKS = 0x56410004
_LOCK_SHARED_DAYS = text(
    "SELECT pg_advisory_xact_lock(:namespace, hashtext(key)) FROM unnest(CAST(:keys AS text[])) AS key"
)
_LOCK_CAPACITIES = text(
    "SELECT pg_advisory_xact_lock_shared(:namespace, hashtext(id)) FROM unnest(CAST(:ids AS text[])) AS id"
)


def _lock_shared_resources(
    uow: UnitOfWork, resource_ids: list[uuid.UUID], start: datetime, occupied_until: datetime
) -> None:
    """Serialise the counting of these shared resources with every booking that could overlap
    [start, occupied_until) on them: a lock per resource and UTC day the interval touches (two
    overlapping intervals share the day of any instant they share). A room's bookings on other days do
    not wait for this one. Keys in sorted order (unnest keeps it), so that no two bookings deadlock; a
    clash of two keys' hashes only makes two bookings wait for each other needlessly.

    First the resources' capacity locks, which the database's trigger would take at the insert: a capacity
    change holds its resource's while it takes the locks per day of the allocations it rewrites, so a booking
    that held a day's lock first could wait for the change while the change waited for it."""
    ids = [str(resource_id) for resource_id in resource_ids]
    uow.session.execute(_LOCK_CAPACITIES, {"namespace": CAPACITY_LOCKS, "ids": ids})
    keys = resource_day_keys(resource_ids, start, occupied_until)
    uow.session.execute(_LOCK_SHARED_DAYS, {"namespace": SHARED_RESOURCE_LOCKS, "keys": keys})


def resource_day_keys(resource_ids: list[uuid.UUID], start: datetime, occupied_until: datetime) -> list[str]:
    """The sorted lock keys, "<resource id>:<UTC date>", of every UTC day [start, occupied_until) touches."""
    first = start.astimezone(UTC).date()
    last = (occupied_until - timedelta(microseconds=1)).astimezone(UTC).date()
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    return sorted(f"{resource_id}:{day.isoformat()}" for resource_id in resource_ids for day in days)


def _with_alternatives(
    uow: UnitOfWork,
    service: Service,
    appointment: Appointment,
    start: datetime,
    now: datetime,
    resource_ids: tuple[uuid.UUID, ...],
    unavailable: SlotUnavailable,
    moving_from: Slot | None = None,
) -> SlotUnavailable:
    tenant = _tenant(uow, uow.tenant_id)
    nearest = availability.nearest_alternatives(
        uow,
        service,
        start,
        now,
        ALTERNATIVES + (moving_from is not None),
        resource_ids or None,
        closed_months=lambda first, last: _months_without_room(
            uow, tenant, first, last, appointment.id, moving_from
        ),
    )
    # One more was asked for when a move's own place (its time with its resources) may be among them; of
    # the rest, the nearest stay. The same time with another stylist is a real move, and stays.
    others = sorted(
        (slot for slot in nearest if not _same_place(slot, moving_from)),
        key=lambda slot: abs(slot.start - start),
    )
    alternatives = sorted(others[:ALTERNATIVES], key=lambda slot: slot.start)
    timezone = ZoneInfo(tenant.timezone)
    return SlotUnavailable(
        unavailable.message,
        code=unavailable.code,
        alternatives=[slot.as_dict(timezone) for slot in alternatives],
    )


def new_reference() -> str:
    return "".join(secrets.choice(REFERENCE_ALPHABET) for _ in range(REFERENCE_LENGTH))


# SQLAlchemy cannot cache a statement with ON CONFLICT (it compiles it anew on every call, ~1 ms), so
# the booking's own insert is written out once.
_INSERT_APPOINTMENT = select(Appointment).from_statement(
    text(
        "INSERT INTO appointments (id, booking_reference, tenant_id, service_id, client_id, scheduled_start,"
        " scheduled_end, status, status_changed_at, booking_method, quoted_price, client_notes)"
        " VALUES (:id, :booking_reference, :tenant_id, :service_id, :client_id, :scheduled_start,"
        " :scheduled_end, :status, :status_changed_at, :booking_method, :quoted_price, :client_notes)"
        " ON CONFLICT (booking_reference) DO NOTHING RETURNING *"
    )
)


def _insert_with_new_reference(uow: UnitOfWork, **columns: Any) -> Appointment:
    """Insert the appointment under a fresh booking reference.

    References are unique across all businesses, but row-level security hides other businesses'
    rows, so a look-up cannot tell whether one is free: the unique index decides, and a clash
    (about one in 390 million per existing appointment) simply draws again.
    """
    for _ in range(REFERENCE_ATTEMPTS):
        appointment = uow.session.scalar(
            _INSERT_APPOINTMENT, {"id": uuid.uuid4(), "booking_reference": new_reference(), **columns}
        )
        if appointment is not None:
            return appointment
    raise RuntimeError("could not draw a free booking reference")


# A booking's tenant and service with the plan's limit; the service is missing (NULL) when it is not
# visible to the tenant, the tenant when it is not visible either.
_REQUEST_CONTEXT = (
    select(Tenant, Service, plans.PLAN_LIMIT.scalar_subquery())
    .outerjoin(Service, Service.id == bindparam("service_id"))
    .where(Tenant.id == bindparam("tenant_id"))
)


def _refuse_if_month_full(
    uow: UnitOfWork, tenant: Tenant, limit: int | None, start: datetime, besides: uuid.UUID | None = None
) -> None:
    """A look before any work: refuse a booking in a local month that already holds `limit` (see
    `plans.allowance`) appointments, `besides` the one being booked or moved. Not the count that decides
    (`_lock_and_count_month` is)."""
    if limit is not None:
        _count_month(uow, tenant, limit, start, besides)


def _lock_and_count_month(
    uow: UnitOfWork, tenant: Tenant, limit: int | None, start: datetime, besides: uuid.UUID
) -> None:
    """The count that decides: two bookings must not both take the last unit, so the count is serialised
    per tenant (for limited plans only) by a lock on its row, held to the commit. The caller sends it last,
    once the appointment is in place, so that the lock is held for the commit and not for the booking. FOR
    NO KEY UPDATE (key_share): it excludes other counts, not the foreign-key checks of rows that reference
    the tenant, so the API records the business's new requests meanwhile without waiting."""
    if limit is None:
        return
    uow.session.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update(key_share=True))
    _count_month(uow, tenant, limit, start, besides)


def _count_month(
    uow: UnitOfWork, tenant: Tenant, limit: int, start: datetime, besides: uuid.UUID | None
) -> None:
    """LimitReached when `start`'s local month holds `limit` appointments already, `besides` this one."""
    zone = ZoneInfo(tenant.timezone)
    booked = plans.booked_by_month(uow, tenant.id, zone, start, start, besides)
    if sum(booked.values()) >= limit:
        raise LimitReached(
            f"{tenant.name} cannot take more appointments in {start.astimezone(zone):%B %Y}.",
            code="plan_limit_reached",
        )


def _same_month(tenant: Tenant, one: datetime, other: datetime) -> bool:
    """Whether two instants fall in one local month of the business: a move within its month adds nothing
    to the month, so the plan's limit does not apply to it (a business over a smaller plan's limit may
    still move that month's appointments)."""
    zone = ZoneInfo(tenant.timezone)
    return plans.month_start(one, zone) == plans.month_start(other, zone)


def _same_place(slot: Slot, other: Slot | None) -> bool:
    return other is not None and (slot.start, set(slot.resource_ids)) == (
        other.start,
        set(other.resource_ids),
    )


def _months_without_room(
    uow: UnitOfWork,
    tenant: Tenant,
    first: date,
    last: date,
    appointment_id: uuid.UUID,
    moving_from: Slot | None,
) -> frozenset[date]:
    """The local months (by their first day) from `first`'s to `last`'s, the dates the alternatives are
    searched in, that the plan has filled, the appointment itself aside; never the month a move starts from.
    An alternative offered must be bookable, and the nearest ones can fall in the next month: the search goes
    on past them instead."""
    limit = plans.monthly_allowance(uow, tenant.id)
    if limit is None:
        return frozenset()
    zone = ZoneInfo(tenant.timezone)
    full = plans.full_months(uow, tenant.id, zone, limit, first, last, appointment_id)
    if moving_from is not None:
        full.discard(plans.month_start(moving_from.start, zone).date())
    return frozenset(full)


def _as_it_stands(uow: UnitOfWork, appointment: Appointment, tenant: Tenant) -> BookedAppointment:
    return _booked(appointment, _resources_held_by(uow, appointment), tenant)


def _booked(
    appointment: Appointment, resource_ids: tuple[uuid.UUID, ...], tenant: Tenant
) -> BookedAppointment:
    return BookedAppointment(
        appointment_id=appointment.id,
        booking_reference=appointment.booking_reference,
        status=appointment.status,
        start=appointment.scheduled_start,
        end=appointment.scheduled_end,
        resource_ids=tuple(sorted(resource_ids)),
        timezone=tenant.timezone,
    )


# --- changes to an existing appointment ---------------------------------------------------------------


# FOR NO KEY UPDATE (key_share): it excludes other changes to the appointment, not rows that refer to it
# (a call log, a reminder), which would otherwise wait for this change to commit. populate_existing: the
# values read under the lock win over any the session holds from before it.
_LOCK_APPOINTMENT = (
    select(Appointment)
    .where(Appointment.id == bindparam("appointment_id"))
    .with_for_update(key_share=True)
    .execution_options(populate_existing=True)
)


def _locked_appointment(uow: UnitOfWork, appointment_id: uuid.UUID) -> Appointment:
    key = uow.id_of(Appointment, appointment_id, code="appointment_not_found", what="Appointment")
    appointment = uow.session.scalar(_LOCK_APPOINTMENT, {"appointment_id": key})
    return uow.visible(
        Appointment, appointment_id, appointment, code="appointment_not_found", what="Appointment"
    )


def _check_change_window(
    service: Service, appointment: Appointment, now: datetime, requested_at: datetime | None, action: str
) -> None:
    """The service's policy on changes by the client, judged when the client asked (`requested_at`, the
    intake job's time: a request accepted in time is honoured however long it queued), else now."""
    asked = now if requested_at is None else min(requested_at, now)
    done = {"cancel": "cancelled", "reschedule": "rescheduled"}[action]
    # One policy for both (the seed has no flag of its own for moves): an appointment the client may not
    # cancel online, the client may not move online either, or a move to a far date would be a cancellation.
    if not service.allows_cancellation:
        raise Conflict(
            f"{service.name} appointments cannot be {done} online; please call the business.",
            code=f"{action}_not_allowed",
        )
    window = timedelta(hours=service.cancellation_policy_hours or 0)
    if appointment.scheduled_start - asked < window:
        raise Conflict(
            f"Appointments can be {done} up to {service.cancellation_policy_hours} hours before they start.",
            code=f"{action}_window_passed",
        )


def _release(uow: UnitOfWork, appointment: Appointment) -> None:
    uow.session.execute(
        update(AppointmentResource)
        .where(AppointmentResource.appointment_id == appointment.id, AppointmentResource.active.is_(True))
        .values(active=False)
    )


def reschedule(
    uow: UnitOfWork,
    appointment_id: uuid.UUID,
    new_start: datetime,
    now: datetime,
    resource_ids: tuple[uuid.UUID, ...] = (),
    *,
    requested_at: datetime | None = None,
) -> BookedAppointment:
    """Move an appointment: the old allocation is released and the new one taken in one transaction,
    so a failed move leaves the appointment exactly where it was. The change window is judged at
    `requested_at` (see `_check_change_window`), the new time at `now`."""
    tenant = _tenant(uow, uow.tenant_id)
    appointment = _locked_appointment(uow, appointment_id)
    if appointment.status not in MOVABLE_STATUSES:
        raise IllegalTransition(
            f"A {appointment.status} appointment cannot be rescheduled.", code="illegal_status_change"
        )
    if new_start.tzinfo is None:
        raise start_without_offset()
    previous_start = appointment.scheduled_start
    previous_resources = _resources_held_by(uow, appointment)
    if _already_there(uow, appointment, new_start, resource_ids, previous_resources):
        # Already there: nothing to move, and a business's confirmation of this time still stands. Before
        # the change window and the business's standing, as for a cancellation: a move retried after it
        # succeeded finds the appointment where it asked for, and must not be told it was refused.
        return _booked(appointment, previous_resources, tenant)
    _bookable_tenant(tenant)
    service = _service_to_move(uow, appointment)
    _check_change_window(service, appointment, now, requested_at, "reschedule")
    linked = _eligible_resources(uow, tenant, service, new_start, now, resource_ids)
    new_start = _in_utc(new_start)
    limit = (
        None if _same_month(tenant, previous_start, new_start) else plans.monthly_allowance(uow, tenant.id)
    )
    _refuse_if_month_full(uow, tenant, limit, new_start, besides=appointment.id)
    previous = Slot(previous_start, appointment.scheduled_end, previous_resources)
    _release(uow, appointment)
    # Only those that still serve the service: a chair the business has since replaced must not cost the
    # client their stylist.
    still_serving = tuple(resource_id for resource_id in previous_resources if resource_id in linked)
    kept = () if resource_ids else _same_resources_if_free(uow, service, new_start, now, still_serving)
    _record_move(uow, service, appointment, new_start, now)
    try:
        slot = _allocate(uow, service, appointment, new_start, now, resource_ids or kept, linked, previous)
    except SlotUnavailable:
        if not kept:
            raise
        # The stylist kept was taken meanwhile: any free one will do, as for a new booking.
        slot = _allocate(uow, service, appointment, new_start, now, (), linked, previous)
    uow.session.flush()
    # The confirmation of the old time must not go out after the one of the new time.
    notifications.withdraw_pending(uow, appointment.id)
    _queue_confirmation(uow, tenant, service, appointment)
    # Last, as in `book`: the client's row and the tenant's count stay locked only for the commit.
    clients.recount_latest(uow, appointment.client_id)
    _lock_and_count_month(uow, tenant, limit, new_start, appointment.id)
    return _booked(appointment, slot.resource_ids, tenant)


def _record_move(
    uow: UnitOfWork, service: Service, appointment: Appointment, new_start: datetime, now: datetime
) -> None:
    """The appointment's new times, with the move in its history. All of it goes in one UPDATE (and one
    audit row); a refused allocation rolls it all back."""
    history = list((appointment.metadata_ or {}).get("reschedules", []))
    history.append(
        {"from": appointment.scheduled_start.isoformat(), "to": new_start.isoformat(), "at": now.isoformat()}
    )
    appointment.metadata_ = {**(appointment.metadata_ or {}), "reschedules": history}
    appointment.scheduled_start = new_start
    appointment.scheduled_end = new_start + timedelta(minutes=service.duration_minutes)
    # What was sent told the client of the old time: the new time gets its own confirmation and reminder.
    appointment.confirmation_sent_at = None
    appointment.reminder_sent_at = None
    if service.requires_confirmation and appointment.status == "confirmed":
        # The business confirmed the old time, not this one.
        _set_status(uow, appointment, "scheduled", now)


def _same_resources_if_free(
    uow: UnitOfWork, service: Service, start: datetime, now: datetime, previous: tuple[uuid.UUID, ...]
) -> tuple[uuid.UUID, ...]:
    """A moved appointment keeps its stylist when the stylist is free at the new time; otherwise any
    free one will do, as for a new booking."""
    try:
        availability.check_slot(uow, service, start, now, previous)
    except (SlotUnavailable, InvalidRequest):
        return ()
    return previous


def _set_status(uow: UnitOfWork, appointment: Appointment, status: str, now: datetime) -> None:
    appointment.status = status
    appointment.status_changed_at = now
    appointment.status_changed_by = uow.user_id


def _change_status(
    uow: UnitOfWork, appointment: Appointment, new_status: str, now: datetime, reason: str | None = None
) -> BookedAppointment:
    """The one place a status changes on request, through the state machine, on an appointment the caller
    has locked. (A move also sends a confirmed appointment back to `scheduled`: see `reschedule`.)"""
    allowed = TRANSITIONS.get(appointment.status, set())
    if new_status not in allowed:
        raise IllegalTransition(
            f"A {appointment.status} appointment cannot become {new_status}.", code="illegal_status_change"
        )
    # A no-show or a completion recorded ahead of time, by mistake, would free the resources of an
    # appointment that is still to come. One already started may end early.
    written_off = new_status in ("no_show", "completed") and appointment.status != "in_progress"
    if written_off and now < appointment.scheduled_start:
        raise IllegalTransition(
            f"The appointment starts at {appointment.scheduled_start.isoformat()}: it cannot be"
            f" {'marked as a no-show' if new_status == 'no_show' else 'completed'} before then.",
            code="not_due_yet",
        )
    if new_status == "in_progress" and now < appointment.scheduled_start - EARLIEST_START:
        raise IllegalTransition(
            f"The appointment starts at {appointment.scheduled_start.isoformat()}: it can be started"
            f" from {EARLIEST_START.total_seconds() / 60:.0f} minutes before then, not earlier.",
            code="not_due_yet",
        )
    _set_status(uow, appointment, new_status, now)
    if new_status == "in_progress":
        appointment.actual_start = now
    if new_status == "completed":
        appointment.actual_start = appointment.actual_start or appointment.scheduled_start
        # Completed no later than it started (recorded at once, or a caller's clock behind): it ended at its
        # scheduled end, unless it started after that; never before it began.
        began = appointment.actual_start
        appointment.actual_end = now if now > began else max(appointment.scheduled_end, began)
        if appointment.final_price is None:
            appointment.final_price = appointment.quoted_price
    if new_status == "cancelled":
        appointment.cancellation_reason = reason
    if new_status not in HOLDING_STATUSES:
        _release(uow, appointment)
    uow.session.flush()
    if new_status == "cancelled":
        clients.recount_latest(uow, appointment.client_id)
    tenant = _tenant(uow, appointment.tenant_id)
    return _as_it_stands(uow, appointment, tenant)


def cancel(
    uow: UnitOfWork,
    appointment_id: uuid.UUID,
    reason: str | None,
    now: datetime,
    *,
    requested_at: datetime | None = None,
) -> BookedAppointment:
    """A client's cancellation: honours the service's policy (as it stood when the client asked,
    `requested_at`) and tells the client."""
    appointment = _locked_appointment(uow, appointment_id)
    if appointment.status == "cancelled":
        # Already done (a client's retry after a timeout, without its Idempotency-Key): the outcome they
        # asked for, as it is; the first reason stands and nobody is told twice.
        tenant = _tenant(uow, appointment.tenant_id)
        return _as_it_stands(uow, appointment, tenant)
    # Read even when the business has retired the service since: its booked clients may still cancel.
    service = uow.session.get(Service, appointment.service_id)
    if appointment.status not in ("scheduled", "confirmed"):
        raise IllegalTransition(
            f"A {appointment.status} appointment cannot be cancelled.", code="illegal_status_change"
        )
    _check_change_window(service, appointment, now, requested_at, "cancel")
    # Read before the change, which reads it too: the session holds rows only while they are referenced.
    tenant = _tenant(uow, appointment.tenant_id)
    result = _change_status(uow, appointment, "cancelled", now, reason=reason)
    client = uow.session.get(Client, appointment.client_id)
    notifications.withdraw_pending(uow, appointment.id)
    notifications.queue_for_appointment(uow, tenant, client, service, appointment, "appointment_cancelled")
    return result


def confirm(uow: UnitOfWork, appointment_id: uuid.UUID, now: datetime) -> BookedAppointment:
    """The business confirms an appointment of a service that requires it. The client, told so far that
    the request was received, is now told it is confirmed (the first message, if still unsent, is not)."""
    appointment = _locked_appointment(uow, appointment_id)
    result = _change_status(uow, appointment, "confirmed", now)
    tenant = _tenant(uow, appointment.tenant_id)
    service = uow.session.get(Service, appointment.service_id)
    notifications.withdraw_pending(uow, appointment.id, "appointment_confirmed")
    _queue_confirmation(uow, tenant, service, appointment, occasion="@confirmed")
    return result


def _queue_confirmation(
    uow: UnitOfWork, tenant: Tenant, service: Service, appointment: Appointment, occasion: str = ""
) -> None:
    """The client's confirmation of the appointment as it now stands, after a move or the business's
    confirmation (`occasion`). Keyed by the moves so far: each move, and each confirmation after a move
    sent it back for confirmation, is news to the client once."""
    client = uow.session.get(Client, appointment.client_id)
    moves = len((appointment.metadata_ or {}).get("reschedules", []))
    notifications.queue_for_appointment(
        uow,
        tenant,
        client,
        service,
        appointment,
        "appointment_confirmed",
        occasion + notifications.event_suffix(moves),
    )


# Each status change has a function of its own, with what goes with it (`cancel` and `confirm` tell the
# client); no entry point takes a status by name, so none can skip that. `confirm`, `start`, `complete` and
# `mark_no_show` are the business's: no route calls them yet (the business's dashboard, with accounts).


def start(uow: UnitOfWork, appointment_id: uuid.UUID, now: datetime) -> BookedAppointment:
    return _change_status(uow, _locked_appointment(uow, appointment_id), "in_progress", now)


def complete(uow: UnitOfWork, appointment_id: uuid.UUID, now: datetime) -> BookedAppointment:
    return _change_status(uow, _locked_appointment(uow, appointment_id), "completed", now)


def mark_no_show(uow: UnitOfWork, appointment_id: uuid.UUID, now: datetime) -> BookedAppointment:
    return _change_status(uow, _locked_appointment(uow, appointment_id), "no_show", now)


# --- reading ------------------------------------------------------------------------------------------


def get_appointment(uow: UnitOfWork, appointment_id: uuid.UUID) -> AppointmentView:
    appointment = uow.get(Appointment, appointment_id, code="appointment_not_found", what="Appointment")
    return _views(uow, [appointment])[0]


def find_by_reference(uow: UnitOfWork, reference: str) -> list[AppointmentView]:
    """The business's appointment with this booking reference as a person reads it out (any case, with
    spaces, dashes or other separators), or none."""
    # Ours are letters and digits only; an imported one may keep its own separators ("REF-1042").
    as_given = "".join(character for character in reference.upper() if character.isprintable()).strip()
    spoken = "".join(character for character in as_given if character.isalnum())
    appointment = uow.session.scalar(
        select(Appointment).where(
            Appointment.tenant_id == uow.tenant_id,
            Appointment.booking_reference.in_([as_given, spoken]),
            Appointment.deleted_at.is_(None),
        )
    )
    return [] if appointment is None else _views(uow, [appointment])


@dataclass(frozen=True)
class AppointmentPage:
    appointments: list[AppointmentView]
    # Where the next page starts (after this start and id), or None on the last page.
    next_after: tuple[datetime, uuid.UUID] | None


def list_appointments(
    uow: UnitOfWork,
    date_from: date,
    date_to: date,
    *,
    statuses: frozenset[str] = frozenset(),
    after: tuple[datetime, uuid.UUID] | None = None,
    limit: int = 50,
) -> AppointmentPage:
    """The business's appointments starting on the local dates date_from..date_to (both included), by start
    time, `limit` at a time: a page ends where the next begins (`after`), so an appointment booked or
    cancelled between pages neither repeats nor shifts the others (one moved across the cursor can).
    `statuses`: only those (empty: every status)."""
    availability.check_date_range(date_from, date_to)
    tz = ZoneInfo(_tenant(uow, uow.tenant_id).timezone)
    try:
        starts = availability.local_midnight(date_from, tz)
        ends = availability.local_midnight(date_to + timedelta(days=1), tz)
    except OverflowError:  # 9999-12-31 has no next day; 0001-01-01 east of UTC begins before year 1
        raise InvalidRequest("The dates are outside the calendar.", code="invalid_range") from None
    query = select(Appointment).where(
        Appointment.tenant_id == uow.tenant_id,
        Appointment.deleted_at.is_(None),
        Appointment.scheduled_start >= starts,
        Appointment.scheduled_start < ends,
    )
    if statuses:
        query = query.where(Appointment.status.in_(sorted(statuses)))
    if after is not None:
        query = query.where(tuple_(Appointment.scheduled_start, Appointment.id) > tuple_(*after))
    found = uow.session.scalars(
        query.order_by(Appointment.scheduled_start, Appointment.id).limit(limit + 1)
    ).all()
    page = found[:limit]
    more = len(found) > limit
    return AppointmentPage(_views(uow, page), (page[-1].scheduled_start, page[-1].id) if more else None)


def _views(uow: UnitOfWork, appointments: list[Appointment]) -> list[AppointmentView]:
    """The appointments as they are shown, in four queries however many there are."""
    if not appointments:
        return []
    tenant = _tenant(uow, appointments[0].tenant_id)
    # Kept here, not left to the session: its identity map holds clean rows weakly, so a row read and
    # dropped is gone again by the time session.get looks for it, which then queries once per appointment.
    services = {
        s.id: s
        for s in uow.session.scalars(
            select(Service).where(Service.id.in_({a.service_id for a in appointments}))
        )
    }
    people = {
        c.id: c
        for c in uow.session.scalars(select(Client).where(Client.id.in_({a.client_id for a in appointments})))
    }
    allocations = _allocations_of(uow, appointments)
    return [
        _view(
            tenant,
            a,
            services[a.service_id],
            people[a.client_id],
            _held_resources(a, allocations.get(a.id, [])),
        )
        for a in appointments
    ]


def _view(
    tenant: Tenant,
    appointment: Appointment,
    service: Service,
    client: Client,
    shown: list[tuple[AppointmentResource, Resource]],
) -> AppointmentView:
    return AppointmentView(
        appointment=_booked(appointment, tuple(r.id for _, r in shown), tenant),
        service={
            "service_id": str(service.id),
            "name": service.name,
            "duration_minutes": service.duration_minutes,
        },
        client={
            "client_id": str(client.id),
            "first_name": client.first_name,
            "last_name": client.last_name,
            "phone": client.phone,
            "email": client.email,
        },
        resources=[{"resource_id": str(r.id), "name": r.name, "type": r.type} for _, r in shown],
        quoted_price=appointment.quoted_price,
        currency=service.price_currency,
        booking_method=appointment.booking_method,
        client_notes=appointment.client_notes,
        cancellation_reason=appointment.cancellation_reason,
    )


def _allocations_of(
    uow: UnitOfWork, appointments: list[Appointment]
) -> dict[uuid.UUID, list[tuple[AppointmentResource, Resource]]]:
    """Every allocation of these appointments, the current and the released, by appointment."""
    allocations: dict[uuid.UUID, list[tuple[AppointmentResource, Resource]]] = {}
    for allocation, resource in uow.session.execute(
        select(AppointmentResource, Resource)
        .join(Resource, Resource.id == AppointmentResource.resource_id)
        .where(AppointmentResource.appointment_id.in_([a.id for a in appointments]))
        .order_by(Resource.id)
    ):
        allocations.setdefault(allocation.appointment_id, []).append((allocation, resource))
    return allocations


def _resources_held_by(uow: UnitOfWork, appointment: Appointment) -> tuple[uuid.UUID, ...]:
    allocations = _allocations_of(uow, [appointment]).get(appointment.id, [])
    return tuple(resource.id for _, resource in _held_resources(appointment, allocations))


def _held_resources(
    appointment: Appointment, allocations: list[tuple[AppointmentResource, Resource]]
) -> list[tuple[AppointmentResource, Resource]]:
    """Of the appointment's allocations, those it holds, or for a released one (cancelled, completed) those
    of its last allocation: earlier allocations left behind by a reschedule are history."""
    active = [(allocation, resource) for allocation, resource in allocations if allocation.active]
    if active or not allocations:
        return active
    # None at its time only if its rows were edited by hand (an import, an operator): the last allocation, then.
    at_its_time = [
        (a, r) for a, r in allocations if a.allocated_start == appointment.scheduled_start
    ] or allocations
    last = max(allocation.created_at for allocation, _ in at_its_time)
    return [(allocation, resource) for allocation, resource in at_its_time if allocation.created_at == last]
