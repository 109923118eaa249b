"""Clients of a business: found by phone or email, created once."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass, replace
from datetime import datetime

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import bindparam, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import JSONB

from core.db import UnitOfWork
from core.errors import Conflict, InvalidRequest
from core.models import NOT_COUNTED_STATUSES, Appointment, Client, Tenant

KEYPAD_LETTER = re.compile(r"[A-Za-z]")
TEL_PREFIX = re.compile(r"^\s*tel:", re.IGNORECASE)


@dataclass(frozen=True)
class ClientDetails:
    first_name: str
    last_name: str | None = None
    phone: str | None = None
    email: str | None = None
    preferred_language: str | None = None


def normalise_phone(raw: str, default_region: str | None) -> str:
    """E.164 form of a phone number; numbers without a country code are read in the business's country."""
    # NFKC: full-width letters are letters too. A tel: link (RFC 3966) is a number.
    typed = TEL_PREFIX.sub("", unicodedata.normalize("NFKC", raw))
    if KEYPAD_LETTER.search(typed):
        # phonenumbers reads Latin letters as a keypad spells them (612-ABC-DEF is 612 222 333): a typo
        # would become somebody else's number. Other scripts' marks (the Japanese long dash ー) are
        # punctuation to it. An extension label ("ext. 12", "x12") is refused here too.
        raise _invalid_phone(f"'{raw}' is not a phone number: it should have digits only.")
    try:
        number = phonenumbers.parse(typed, (default_region or "ES").upper())
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        raise _invalid_phone(f"'{raw}' is not a valid phone number.")
    if number.extension:
        # Confirmations and reminders go by SMS, which an extension cannot receive; dropping it silently
        # would leave the business calling a switchboard.
        raise _invalid_phone(f"'{raw}' has an extension; give a number that reaches the client directly.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _invalid_phone(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_phone", field="client.phone")


def normalise_email(raw: str) -> str:
    """The address as stored: checked by its syntax only (no DNS look-up inside a booking), its domain in
    ASCII (IDNA), all lower case, so one client is found by any spelling of it.

    A non-ASCII local part (lucía@…) is refused: it needs SMTPUTF8 on every server on the way, which many
    lack, so the confirmation would never arrive.
    """
    try:
        checked = validate_email(raw.strip(), check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as error:
        raise InvalidRequest(
            f"'{raw}' is not a valid email address: {error}", code="invalid_email", field="client.email"
        ) from None
    return checked.ascii_email.lower()


# What renders as nothing: spaces, controls, format characters (zero-width space, word joiner, byte-order
# mark), combining marks on their own (variation selectors, the grapheme joiner), and the letters and symbol
# that are blank by design (the Hangul fillers, the Braille blank). A name made only of these would be a blank
# in every confirmation. Unassigned code points count as visible: a script newer than this Python's Unicode
# tables is still a script.
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Me"})
_BLANK_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _visible(character: str) -> bool:
    return unicodedata.category(character) not in _INVISIBLE_CATEGORIES and character not in _BLANK_CHARACTERS


def normalise(details: ClientDetails, tenant: Tenant) -> ClientDetails:
    """The details as they are stored; raises InvalidRequest for a bad phone or email."""
    first_name = details.first_name.strip()
    if not any(_visible(character) for character in first_name):
        raise InvalidRequest(
            "The client's first name is required.", code="invalid_name", field="client.first_name"
        )
    phone = normalise_phone(details.phone, tenant.country) if details.phone else None
    email = normalise_email(details.email) if details.email else None
    if phone is None and email is None:
        raise InvalidRequest(
            "A phone number or an email address is needed to confirm the booking.", code="contact_required"
        )
    return ClientDetails(
        first_name=first_name,
        last_name=(details.last_name or "").strip() or None,
        phone=phone,
        email=email,
        preferred_language=details.preferred_language or tenant.locale,
    )


# SQLAlchemy cannot cache a statement with ON CONFLICT (it compiles it anew on every call, ~1 ms), so
# this hot one is written out once. The partial unique indexes (phone, email per tenant) are the arbiters.
_INSERT_CLIENT = select(Client).from_statement(
    text(
        "INSERT INTO clients (tenant_id, first_name, last_name, phone, email, preferred_language,"
        " communication_preferences, source, total_appointments, last_appointment_date)"
        " VALUES (:tenant_id, :first_name, :last_name, :phone, :email, :preferred_language,"
        " :communication_preferences, 'booking', 1, :booked_start)"
        " ON CONFLICT DO NOTHING RETURNING *"
    ).bindparams(bindparam("communication_preferences", type_=JSONB))
)


def for_booking(
    uow: UnitOfWork, tenant: Tenant, details: ClientDetails, booked_start: datetime
) -> tuple[Client, bool]:
    """The tenant's client with this phone (else email, unless that client has another phone), or a new
    one; and whether it is new. A new client's row counts this booking already; a returning client's booking
    is counted by `count_booking`, which the caller sends last (it locks the client's row).

    A returning client's row is never changed by a booking: nothing proves that the person booking owns the
    phone (or email) they give, so a contact typed beside it would let anyone redirect another client's
    confirmations to themselves. Confirmations go to the contacts on file; changing those is the business's.

    Two bookings for the same new client can race to create it: the partial unique indexes decide,
    and the loser looks again and finds the winner's row (or, for a shared email, another person's).
    """
    details = normalise(details, tenant)
    # Each lost race means another booking created a client with this phone or email meanwhile; the
    # third look finds it, whatever the two others lost to.
    for _ in range(3):
        client = _find(uow, tenant, details)
        if client is not None and _someone_else(client, details):
            # A new client by phone; the address stays the other client's (unique per tenant), so that
            # nothing of this booking reaches the other person.
            details, client = replace(details, email=None), None
        if client is not None:
            return client, False
        client = uow.session.scalar(
            _INSERT_CLIENT,
            {
                "tenant_id": tenant.id,
                "first_name": details.first_name,
                "last_name": details.last_name,
                "phone": details.phone,
                "email": details.email,
                "preferred_language": details.preferred_language,
                "communication_preferences": {
                    "email": details.email is not None,
                    "sms": details.phone is not None,
                },
                "booked_start": booked_start,
            },
        )
        if client is not None:
            return client, True
    raise Conflict("The client's phone and email belong to two different clients.", code="client_conflict")


# Counted in SQL, not from values read before: two bookings of one client at once must not both write
# "previous + 1" (the row lock of the UPDATE orders them, each adds to the other's). On the table, not the
# mapped class: the client read by the booking keeps its old figures, which nothing reads afterwards.
_COUNT_BOOKING = (
    update(Client.__table__)
    .where(Client.__table__.c.id == bindparam("client_id"))
    .values(
        total_appointments=func.coalesce(Client.__table__.c.total_appointments, 0) + 1,
        last_appointment_date=func.greatest(
            Client.__table__.c.last_appointment_date, bindparam("booked_start")
        ),
    )
)


def count_booking(uow: UnitOfWork, client: Client, booked_start: datetime) -> None:
    """Count a returning client's booking. Its UPDATE locks the client's row until the commit, so the
    booking sends it last: a second booking of the same person (a parent booking for the family) then waits
    only for this one's commit, not for all of it."""
    uow.session.execute(_COUNT_BOOKING, {"client_id": client.id, "booked_start": booked_start})


# The client's row locked first: under READ COMMITTED the recount below, a statement of its own, then sees
# every booking of this person committed before the lock was granted (a single UPDATE that waited for the
# row would count with the snapshot taken before it waited). A booking committed later applies its own
# GREATEST on top (`_COUNT_BOOKING`). FOR NO KEY UPDATE, the lock the UPDATEs of the count take: enough to
# wait for them, and no wait for the KEY SHARE that another booking's new appointment holds on the row (its
# foreign key) while that booking waits for this move's resources: FOR UPDATE made that a deadlock.
_LOCK_CLIENT = (
    select(Client.__table__.c.id)
    .where(Client.__table__.c.id == bindparam("client_id"))
    .with_for_update(key_share=True)
)
_LATEST_START = (
    select(func.max(Appointment.__table__.c.scheduled_start))
    .where(
        Appointment.__table__.c.client_id == bindparam("client_id"),
        Appointment.__table__.c.deleted_at.is_(None),
        Appointment.__table__.c.status.not_in(NOT_COUNTED_STATUSES),
    )
    .scalar_subquery()
)
# Written only when it changes: an UPDATE that changes nothing would still leave an audit row.
_RECOUNT_LATEST = (
    update(Client.__table__)
    .where(
        Client.__table__.c.id == bindparam("client_id"),
        Client.__table__.c.last_appointment_date.is_distinct_from(_LATEST_START),
    )
    .values(last_appointment_date=_LATEST_START)
)


def recount_latest(uow: UnitOfWork, client_id: uuid.UUID) -> None:
    """After a cancellation or a move: `last_appointment_date` is the latest start among the client's
    appointments that were not cancelled (a no-show or a completed visit still counts), NULL without any.
    `total_appointments` counts bookings made, and stays. It locks the client's row until the commit, so
    callers send it late, as they do `count_booking`."""
    uow.session.execute(_LOCK_CLIENT, {"client_id": client_id})
    uow.session.execute(_RECOUNT_LATEST, {"client_id": client_id})


def _someone_else(client: Client, details: ClientDetails) -> bool:
    """Found by email alone, with another phone: someone else sharing the address (a family's)."""
    return details.phone is not None and client.phone not in (None, details.phone)


_FIND = (
    select(Client)
    .where(
        Client.tenant_id == bindparam("tenant_id"),
        Client.deleted_at.is_(None),
        # A missing phone or email is NULL here, and matches nothing.
        or_(Client.phone == bindparam("phone"), Client.email == bindparam("email")),
    )
    # The phone match first: a phone identifies a caller better than a shared family email.
    .order_by(Client.phone.is_not_distinct_from(bindparam("phone")).desc())
    .limit(1)
)


def _find(uow: UnitOfWork, tenant: Tenant, details: ClientDetails) -> Client | None:
    """The live client with the phone, else the one with the email (one statement for both)."""
    return uow.session.scalar(_FIND, {"tenant_id": tenant.id, "phone": details.phone, "email": details.email})
