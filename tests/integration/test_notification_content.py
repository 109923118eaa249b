"""What the `notifications` rows of a booking say: each test books through the core (tests/scenarios.py) and
reads the rows a client will later receive. Each one reproduces a defect found in review; the comments above
them say what the code did before."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select

from core import seed
from core.booking import BookingRequest
from core.clients import ClientDetails
from core.db import UnitOfWork
from core.models import Notification
from tests import factories
from tests.scenarios import DAY, book, build_salon, request

# GSM 03.38, the SMS alphabet with its extension table (as in test_notification_queue.py).
GSM_ALPHABET = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)


@pytest.fixture
def system_templates(db):
    with UnitOfWork(system=True) as uow:
        seed.seed_system_templates(uow)
        uow.commit()


def _rows(db, appointment_id) -> dict[str, Notification]:
    rows = db.scalars(select(Notification).where(Notification.appointment_id == appointment_id)).all()
    return {row.channel: row for row in rows}


# --- 1. a business's template that renders to a message no provider accepts -----------------------------
#
# docs/operations.md §4: a business's template that does not render (or renders text that cannot be stored)
# is passed over, and the message is written with the next template in line. A template that renders to a
# message SendGrid or Twilio refuses is written as it is: the row stays `pending` for ever, and the system
# template that would have worked is not used.
#   SendGrid Mail Send: "The subject is required" / "The content value must be a string at least one
#   character in length" (400). Twilio: 21602 "Message body is required", 14103 (empty body, or over 1600
#   characters), 21617 "The concatenated message body exceeds the 1600 character limit".


@pytest.mark.parametrize(
    ("channel", "subject_template", "body_template"),
    [
        pytest.param("email", None, "Hola {{ client_name }}", id="email-without-subject"),
        pytest.param(
            "email", "{% if awaiting_confirmation %}Solicitud{% endif %}", "Hola", id="email-empty-subject"
        ),
        pytest.param(
            "email", "Cita", "{% if awaiting_confirmation %}Solicitud{% endif %}", id="email-empty-body"
        ),
        pytest.param("sms", None, "{% if awaiting_confirmation %}Solicitud{% endif %}", id="sms-empty-body"),
        pytest.param("sms", None, "{{ business_name * 80 }}", id="sms-over-1600-characters"),
    ],
)
def test_a_business_template_that_renders_an_unsendable_message_gives_way_to_the_system_one(
    db, system_templates, channel, subject_template, body_template
):
    salon = build_salon(db)
    own = factories.make_notification_template(
        db,
        salon.tenant,
        channel=channel,
        locale="es",
        subject_template=subject_template,
        body_template=body_template,
    )

    booked = book(salon, request(salon))

    row = _rows(db, booked.appointment_id)[channel]
    assert row.template_id != own.id, (row.subject, row.body[:80])
    assert row.body.strip() and len(row.body) <= 1600
    if channel == "email":
        assert row.subject and row.subject.strip()


# --- 2. an SMS to a landline --------------------------------------------------------------------------
#
# docs/api.md: "since confirmations go by SMS" an extension is refused. A Spanish fixed line (9xx) is stored
# and an SMS row is written for it. Twilio 21635 "'To' number cannot be a landline": outside the US, Canada
# and the UK Twilio refuses the request. The client gave an email too: that is where the message can go.


def test_no_sms_is_queued_for_a_landline(db, system_templates):
    salon = build_salon(db)  # a business in Spain (tenants.country defaults to ES)

    booked = book(salon, request(salon, phone="912 345 678"))  # a Madrid fixed line

    assert sorted(_rows(db, booked.appointment_id)) == ["email"]


# --- 3. babel's typographic apostrophe in an SMS --------------------------------------------------------
#
# core/notifications.py (_GSM_SPACES) and docs/operations.md: babel's no-break spaces are made plain "so that
# a message stays in the 160-character SMS alphabet": one character outside GSM 03.38 sends the whole SMS as
# UCS-2 (70 characters a segment). babel's Catalan (and Asturian) long dates write "d’abril", "d’agost",
# "d’octubre" with U+2019, which is not in the alphabet either.


def test_a_catalan_date_keeps_the_sms_in_the_sms_alphabet(db):
    salon = build_salon(db)
    salon.tenant.locale = "ca"
    db.flush()
    factories.make_notification_template(
        db,
        salon.tenant,
        channel="sms",
        locale="ca",
        body_template="Cita el {{ appointment_date }} a les {{ appointment_time }}. Ref {{ booking_reference }}",
    )

    booked = book(salon, request(salon, day=date(2027, 4, 7)))

    sms = _rows(db, booked.appointment_id)["sms"]
    assert set(sms.body) <= GSM_ALPHABET, sorted(set(sms.body) - GSM_ALPHABET)


# --- 4. a channel with no template at all: no message and no ERROR ---------------------------------------
#
# docs/operations.md §4: "With none left for a channel, that channel gets no message and the ERROR `no
# <channel> template renders for <type> of appointment <id>` says so." A channel with no active template at
# all (system templates not seeded, or not for that channel) is left out silently.


def test_a_channel_without_any_template_is_logged(db, caplog):
    salon = build_salon(db)
    factories.make_notification_template(db, salon.tenant, channel="email", locale="es")

    booked = book(salon, request(salon))  # Lucía gave a phone and an email: both channels are hers

    assert sorted(_rows(db, booked.appointment_id)) == ["email"]
    assert (
        f"no sms template renders for appointment_confirmed of appointment {booked.appointment_id}"
        in caplog.text
    )


# --- 5. a client whose language has no template -----------------------------------------------------------
#
# docs/operations.md §4: "A client whose language has no template gets the English one". With a business's own
# templates in other languages (here German and French) and the system's English one, the Italian client gets
# the business's German one (ranked first for being the business's, then alphabetically).


def test_a_client_whose_language_has_no_template_gets_the_english_one(db, system_templates):
    salon = build_salon(db)
    for locale in ("fr", "de"):
        factories.make_notification_template(
            db,
            salon.tenant,
            channel="sms",
            locale=locale,
            body_template=f"{locale} {{{{ appointment_date }}}}",
        )
    italian = ClientDetails(first_name="Gianni", phone="+39 312 345 6789", preferred_language="it")

    booked = book(
        salon, BookingRequest(service_id=salon.haircut.id, start=salon.at(DAY, "10:00"), client=italian)
    )

    sms = _rows(db, booked.appointment_id)["sms"]
    assert sms.body.startswith(f"{salon.tenant.name}: Haircut confirmed for March 3, 2027"), sms.body
