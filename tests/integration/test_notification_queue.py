"""Which template an appointment event is rendered with, and that an event is queued once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from core import notifications
from core.db import UnitOfWork
from core.models import Notification
from tests import factories
from tests.scenarios import build_salon

START = datetime(2027, 3, 3, 9, 0, tzinfo=UTC)  # 10:00 in Madrid


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
