"""Which template an appointment event is rendered with, and that an event is queued once; a booking of
a business whose locale is written `es-ES` is confirmed in its language."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from core import notifications, seed
from core.db import UnitOfWork
from core.models import Notification
from tests import factories
from tests.scenarios import build_emailing_salon, build_salon, run_job, submit_job

START = datetime(2027, 3, 3, 9, 0, tzinfo=UTC)  # 10:00 in Madrid


@pytest.fixture
def salon(db):
    return build_emailing_salon(db)


def _event(db, locale="es"):
    salon = build_salon(db)
    client = factories.make_client(
        db, salon.tenant, preferred_language=locale, communication_preferences={"email": True, "sms": True}
    )
    appointment = factories.make_appointment(db, salon.tenant, salon.haircut, client, START)
    return salon, client, appointment


def _queue(salon, client, appointment, suffix=""):
    with UnitOfWork(salon.tenant.id) as uow:
        notifications.queue_for_appointment(
            uow, salon.tenant, client, salon.haircut, appointment, "appointment_confirmed", suffix
        )
        uow.commit()


def _queued(db, appointment):
    return db.scalars(select(Notification).where(Notification.appointment_id == appointment.id)).all()


def test_the_same_event_is_queued_once_per_channel(db):
    salon, client, appointment = _event(db)
    for channel in ("email", "sms"):
        factories.make_notification_template(
            db, salon.tenant, channel=channel, locale="es", body_template="{{ booking_reference }}"
        )

    _queue(salon, client, appointment)
    _queue(salon, client, appointment)  # a retried job, a second Beat run
    assert sorted(n.channel for n in _queued(db, appointment)) == ["email", "sms"]

    _queue(salon, client, appointment, suffix="@later")  # a new event of the same kind
    assert len(_queued(db, appointment)) == 4


def test_the_tenants_template_wins_and_the_clients_language_over_english(db):
    salon, client, appointment = _event(db, locale="fr")
    own = factories.make_notification_template(
        db, salon.tenant, channel="email", locale="en", body_template="Own {{ client_name }}"
    )
    factories.make_notification_template(db, None, channel="email", locale="fr", body_template="System fr")
    factories.make_notification_template(db, None, channel="sms", locale="en", body_template="System en")
    factories.make_notification_template(db, None, channel="sms", locale="fr", body_template="Système fr")
    factories.make_notification_template(db, None, channel="sms", locale="de", body_template="System de")

    _queue(salon, client, appointment)

    by_channel = {n.channel: n for n in _queued(db, appointment)}
    assert by_channel["email"].template_id == own.id
    assert by_channel["email"].body == f"Own {client.first_name}"
    assert by_channel["sms"].body == "Système fr"
    assert (
        by_channel["sms"].recipient_phone == client.phone
        and by_channel["email"].recipient_email == client.email
    )


def test_a_locale_written_the_bcp47_way_picks_its_language_and_formats_in_it(db):
    salon, client, appointment = _event(db, locale="pt-BR")
    factories.make_notification_template(db, None, channel="sms", locale="en", body_template="System en")
    factories.make_notification_template(
        db, None, channel="sms", locale="pt", body_template="{{ appointment_date }} {{ appointment_time }}"
    )

    _queue(salon, client, appointment)

    (sms,) = _queued(db, appointment)
    assert sms.body == "3 de março de 2027 10:00"


def test_dates_are_written_in_the_language_of_the_template_that_is_sent(db):
    # A Catalan client: no template in Catalan, so the English one is sent, with an English date in it.
    salon, client, appointment = _event(db, locale="ca")
    when = "{{ appointment_date }} at {{ appointment_time }}"
    factories.make_notification_template(db, None, channel="email", locale="en", body_template=when)
    # A Mexican client with a Spanish template: the date in Mexico's way (its full locale), in Spanish.
    factories.make_notification_template(
        db, None, channel="sms", locale="es", body_template="{{ appointment_time }}"
    )
    mexican = factories.make_client(
        db, salon.tenant, preferred_language="es-MX", communication_preferences={"sms": True, "email": False}
    )
    theirs = factories.make_appointment(db, salon.tenant, salon.haircut, mexican, START)

    _queue(salon, client, appointment)
    _queue(salon, mexican, theirs)

    (email,) = [n for n in _queued(db, appointment) if n.channel == "email"]
    assert email.body == "March 3, 2027 at 10:00\u202fAM"
    (sms,) = _queued(db, theirs)
    assert sms.body == "10:00 a.m."  # es_MX writes a 12-hour clock; es would write 10:00


def test_an_sms_has_no_space_outside_the_sms_alphabet(db):
    # babel writes English times with a narrow no-break space ("2:00\u202fPM"): one such character sends
    # the whole SMS as UCS-2, 70 characters a segment instead of 160.
    salon, client, appointment = _event(db, locale="en")
    factories.make_notification_template(
        db, None, channel="sms", locale="en", body_template="At {{ appointment_time }}\u00a0ok"
    )
    factories.make_notification_template(
        db, None, channel="email", locale="en", body_template="At {{ appointment_time }}"
    )

    _queue(salon, client, appointment)

    queued = {n.channel: n.body for n in _queued(db, appointment)}
    assert queued == {"sms": "At 10:00 AM ok", "email": "At 10:00\u202fAM"}


def test_a_locale_nobody_knows_falls_back_to_the_businesss_and_the_booking_goes_on(db):
    salon, client, appointment = _event(db, locale="xx-YY")
    salon.tenant.locale = "es-ES"
    factories.make_notification_template(
        db, None, channel="sms", locale="es", body_template="{{ appointment_date }}"
    )

    _queue(salon, client, appointment)

    (sms,) = _queued(db, appointment)
    assert sms.body == "3 de marzo de 2027"


def test_a_business_template_that_does_not_render_gives_way_to_the_system_one(db, caplog):
    salon, client, appointment = _event(db)
    broken = factories.make_notification_template(
        db, salon.tenant, channel="sms", locale="es", body_template="{{ appointment_dat }}"
    )
    factories.make_notification_template(
        db, None, channel="sms", locale="es", body_template="System {{ appointment_date }}"
    )
    factories.make_notification_template(
        db, salon.tenant, channel="email", locale="es", body_template="{{ 1 / 0 }}"
    )

    _queue(salon, client, appointment)

    # The SMS falls back to the system template; the email, with nothing else to use, is not queued.
    (sms,) = _queued(db, appointment)
    assert (sms.channel, sms.body) == ("sms", "System 3 de marzo de 2027")
    assert f"notification template {broken.id}" in caplog.text
    assert "no email template renders for appointment_confirmed" in caplog.text


@pytest.mark.parametrize(
    "produces", [pytest.param('{{ "\\x00" }}', id="nul"), pytest.param('{{ "\\ud800" }}', id="surrogate")]
)
def test_a_business_template_whose_text_cannot_be_stored_gives_way_and_the_booking_goes_on(db, produces):
    # Jinja decodes escapes in string literals: the text rendered fine and its insert failed the booking,
    # and so every booking of the business (found in review).
    salon, client, appointment = _event(db)
    factories.make_notification_template(
        db, salon.tenant, channel="sms", locale="es", body_template="Hola" + produces
    )
    factories.make_notification_template(db, None, channel="sms", locale="es", body_template="System")
    factories.make_notification_template(
        db, salon.tenant, channel="email", locale="es", subject_template=produces, body_template="Hola"
    )

    _queue(salon, client, appointment)

    (sms,) = _queued(db, appointment)
    assert (sms.channel, sms.body) == ("sms", "System")


@pytest.mark.parametrize(
    ("client_locale", "theirs", "other"),
    [
        ("es", "es-MX", "en"),  # Spanish written for Mexico, for a client in Spain
        ("es-MX", "es-ES", "en"),
        ("en-GB", "en-US", "de"),  # US English, not German, when there is no British
    ],
)
def test_a_template_in_the_clients_language_wins_whatever_region_it_is_written_for(
    db, client_locale, theirs, other
):
    # The ranking knew the exact locale and the bare language only: es-MX ranked as a foreign language,
    # below English, for a client in Spain (found in review).
    salon, client, appointment = _event(db, locale=client_locale)
    factories.make_notification_template(
        db, salon.tenant, channel="sms", locale=theirs, body_template="theirs"
    )
    factories.make_notification_template(db, salon.tenant, channel="sms", locale=other, body_template="other")

    _queue(salon, client, appointment)

    assert [
        notification.body for notification in _queued(db, appointment) if notification.channel == "sms"
    ] == ["theirs"]


@pytest.mark.parametrize(
    ("email", "preferences", "channels"),
    [
        ("lucia@example.com", {"email": True, "sms": True}, ["email", "sms"]),
        ("lucia@example.com", {"email": True, "sms": False}, ["email"]),
        ("lucia@example.com", {"email": False, "sms": True}, ["sms"]),
        # The column's default on a client we can reach only by phone: the phone it is.
        (None, {"email": True, "sms": False}, ["sms"]),
        # Turned down both: nothing, whichever contacts we have.
        ("lucia@example.com", {"email": False, "sms": False}, []),
        (None, {"email": False, "sms": False}, []),
        # Preferences that do not mention email (an import, a business's edit): email is on unless turned down.
        ("lucia@example.com", {}, ["email"]),
        ("lucia@example.com", {"sms": True}, ["email", "sms"]),
    ],
)
def test_the_clients_preferences_choose_the_channels(db, email, preferences, channels):
    salon, client, appointment = _event(db)
    client.email, client.communication_preferences = email, preferences
    db.flush()
    for channel in ("email", "sms"):
        factories.make_notification_template(
            db, salon.tenant, channel=channel, locale="es", body_template="{{ booking_reference }}"
        )
    _queue(salon, client, appointment)
    assert sorted(n.channel for n in _queued(db, appointment)) == channels


def test_withdrawing_one_kind_of_message_leaves_the_others_pending(db):
    # The business's confirmation withdraws the unsent "request received" message only (booking.confirm):
    # a pending reminder of the same appointment still goes out.
    salon, client, appointment = _event(db)
    for kind in ("appointment_confirmed", "appointment_reminder"):
        factories.make_notification_template(
            db, salon.tenant, type=kind, channel="email", locale="es", body_template="{{ booking_reference }}"
        )
    with UnitOfWork(salon.tenant.id) as uow:
        for kind in ("appointment_confirmed", "appointment_reminder"):
            notifications.queue_for_appointment(uow, salon.tenant, client, salon.haircut, appointment, kind)
        assert notifications.withdraw_pending(uow, appointment.id, "appointment_confirmed") == 1
        uow.commit()
    statuses = {n.notification_type: n.status for n in _queued(db, appointment)}
    assert statuses == {"appointment_confirmed": "cancelled", "appointment_reminder": "pending"}


# GSM 03.38: the SMS alphabet with its extension table.
GSM_ALPHABET = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)


@pytest.mark.parametrize("locale", ["es", "en"])
def test_the_installed_sms_confirmation_fits_one_plain_sms(db, locale):
    """core/seed.py promises it: with ordinary names, one 160-character GSM message."""
    with UnitOfWork(system=True) as uow:
        seed.seed_system_templates(uow)
        uow.commit()
    salon, client, appointment = _event(db, locale=locale)
    client.email = None
    salon.tenant.name = "Salon Ana"
    db.flush()

    _queue(salon, client, appointment)

    (sms,) = _queued(db, appointment)
    assert set(sms.body) <= GSM_ALPHABET, sms.body
    assert len(sms.body) <= 160


def test_a_business_whose_locale_is_written_es_ES_still_takes_bookings(db, salon):
    # babel reads `es_ES`, not `es-ES`: the confirmation's date failed every booking of such a business.
    salon.tenant.locale = "es-ES"
    factories.make_notification_template(
        db,
        salon.tenant,
        type="appointment_confirmed",
        channel="sms",
        locale="es",
        body_template="{{ appointment_date }}",
    )
    outcome = run_job(submit_job(salon).job_id)
    assert outcome["status"] == "succeeded", outcome.get("error")
    (confirmation,) = db.scalars(
        select(Notification).where(Notification.appointment_id == outcome["result"]["appointment_id"])
    ).all()
    assert confirmation.body == "3 de marzo de 2027"
