"""Notifications are written as `pending` rows inside the business transaction and sent later (by the
notifications worker, not built yet: DESIGN §3).

Nothing here talks to a provider: a booking never waits on SendGrid or Twilio, and a failed send
never undoes a booking.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from functools import lru_cache
from zoneinfo import ZoneInfo

import phonenumbers
from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_time
from jinja2 import StrictUndefined, Template
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import bindparam, or_, select, text, update

from core.db import UnitOfWork
from core.models import Appointment, Client, Notification, NotificationTemplate, Service, Tenant

log = logging.getLogger(__name__)

# Templates may be edited by businesses: render them sandboxed, and refuse unknown variables (a message
# with a blank where the date should be is worse than the next template's).
_environment = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


DEFAULT_LOCALE = "es"


def client_locale(tenant: Tenant, client: Client) -> Locale:
    """The client's language, else the business's, else Spanish, as babel knows it."""
    for tag in (client.preferred_language, tenant.locale):
        locale = _parsed(tag)
        if locale is not None:
            return locale
    return Locale.parse(DEFAULT_LOCALE)


def _parsed(tag: str | None) -> Locale | None:
    """The columns are free text: a tag written the BCP 47 way (`es-ES`, `pt-BR`) is read as such, and one
    babel does not know is None rather than failing the booking that queues the notification."""
    if not tag or not tag.strip():
        return None
    try:
        return Locale.parse(tag.strip(), sep="-" if "-" in tag else "_")
    except (ValueError, UnknownLocaleError):
        return None


def writing_locale(template: NotificationTemplate, client: Locale) -> Locale:
    """The locale a template's dates and times are written in: the client's when the template is in the
    client's language (a Mexican client's dates in an `es` template), else the template's own. A Catalan
    client sent the English template reads "March 3, 2027", not "3 de març de 2027" in an English sentence."""
    own = _parsed(template.locale)
    return client if own is None or own.language == client.language else own


def appointment_context(
    tenant: Tenant, client: Client, service: Service, appointment: Appointment, locale: Locale
) -> dict:
    local_start = appointment.scheduled_start.astimezone(ZoneInfo(tenant.timezone))
    return {
        "client_name": client.first_name,
        "business_name": tenant.name,
        "service_name": service.name,
        "appointment_date": format_date(local_start.date(), format="long", locale=locale),
        "appointment_time": format_time(local_start.time(), format="short", locale=locale),
        "booking_reference": appointment.booking_reference,
        "cancellation_reason": appointment.cancellation_reason or "",
        # Booked but not yet confirmed by the business (its service requires that): the client is told
        # the request was received, and told again once it is confirmed (`booking.confirm`).
        "awaiting_confirmation": appointment.status == "scheduled",
    }


def _channels_for(client: Client) -> list[str]:
    preferences = client.communication_preferences or {}
    channels = []
    if client.email and preferences.get("email", True):
        channels.append("email")
    # The column's default is {"email": true, "sms": false}: a client we can only reach by phone still gets
    # the SMS under it. One who turned down email as well as SMS gets nothing.
    if (
        client.phone
        and _takes_sms(client.phone)
        and (preferences.get("sms") or (not channels and preferences.get("email", True)))
    ):
        channels.append("sms")
    return channels


# Twilio refuses an SMS to a landline (21635) except in the countries where it attempts delivery to one.
_LANDLINE_SMS_ATTEMPTED = frozenset({"US", "CA", "GB"})


def _takes_sms(phone: str) -> bool:
    """Whether an SMS to this number can be sent: not to a number that is a fixed line only (a Spanish 9xx;
    numbers that may be either, as every US one, are given the benefit of the doubt)."""
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return True  # stored E.164 always parses; whatever else was stored is not ours to judge here
    if phonenumbers.number_type(number) != phonenumbers.PhoneNumberType.FIXED_LINE:
        return True
    return phonenumbers.region_code_for_number(number) in _LANDLINE_SMS_ATTEMPTED


_TEMPLATES = select(NotificationTemplate).where(
    NotificationTemplate.type == bindparam("type"),
    NotificationTemplate.channel.in_(bindparam("channels", expanding=True)),
    NotificationTemplate.is_active.is_(True),
    or_(NotificationTemplate.tenant_id == bindparam("tenant_id"), NotificationTemplate.tenant_id.is_(None)),
)


def _templates(
    uow: UnitOfWork, tenant: Tenant, notification_type: str, channels: list[str], locale: Locale
) -> dict[str, list[NotificationTemplate]]:
    """The templates of each channel, best first: those in the client's language or in English before any
    other, then the tenant's own before the system ones, then the client's language (its exact locale,
    `es_ES`, then the bare language, `es`, then another region of it, `es_MX`) before English (`en`, then any
    region of it). A business's template in a third language comes only after every one of those: a client
    whose language has no template gets the English one. Channels without any template are left out."""
    candidates = uow.session.scalars(
        _TEMPLATES, {"type": notification_type, "channels": channels, "tenant_id": tenant.id}
    ).all()

    exact, language = str(locale).lower(), locale.language.lower()

    def rank(template: NotificationTemplate) -> tuple[bool, int, int, str]:
        written = (template.locale or "").replace("-", "_").lower()
        written_language = written.partition("_")[0]
        preferred = (
            written == exact,
            written == language,
            written_language == language,
            written == "en",
            written_language == "en",
        )
        closeness = next((place for place, matches in enumerate(preferred) if matches), len(preferred))
        # The locale last: among equals the choice is the same on every booking.
        readable = closeness < len(preferred)
        return (not readable, 0 if template.tenant_id is not None else 1, closeness, template.locale or "")

    ranked: dict[str, list[NotificationTemplate]] = {}
    for template in sorted(candidates, key=rank):
        ranked.setdefault(template.channel, []).append(template)
    return ranked


def _rendered(
    templates: list[NotificationTemplate], context_in: Callable[[Locale], dict], locale: Locale
) -> tuple[NotificationTemplate, str | None, str] | None:
    """The first template that renders, with its subject and body; None if none does. A business's
    template that does not render (a misspelt variable, a syntax error) is logged and passed over: the
    booking that queues the message must not fail for it."""
    for template in templates:
        context = context_in(writing_locale(template, locale))
        try:
            subject = (
                _storable(render(template.subject_template, context)) if template.subject_template else None
            )
            body = _storable(render(template.body_template, context))
            _sendable(template.channel, subject, body)
            return template, subject, body
        except Exception as error:  # whatever a business's template raises (undefined, syntax, 1/0, sandbox)
            log.error("notification template %s (%s) does not render: %s", template.id, template.name, error)
    return None


def _storable(text: str) -> str:
    """`text`, if PostgreSQL can store it. Jinja decodes escapes in a template's string literals, so
    `{{ "\\x00" }}` renders a NUL and `{{ "\\ud800" }}` a lone surrogate; the insert of the message would
    then fail the booking itself."""
    if "\x00" in text or not text.isascii() and _unencodable(text):
        raise ValueError("the text has a NUL character or a lone surrogate, which cannot be stored")
    return text


# Twilio takes a Body of up to 1600 characters (21617) and none that is empty (21602).
SMS_MAX_CHARACTERS = 1600


def _sendable(channel: str, subject: str | None, body: str) -> None:
    """Raises if the provider would refuse the message: SendGrid requires a subject and a non-empty content
    ("The subject is required", "The content value must be a string at least one character in length"),
    Twilio a body of 1 to 1600 characters. Such a message would stay pending for ever, while the next
    template in line would have been sent."""
    if not body.strip():
        raise ValueError("the body is empty")
    if channel == "email" and not (subject and subject.strip()):
        raise ValueError("an email needs a subject")
    if channel == "sms" and len(body) > SMS_MAX_CHARACTERS:
        raise ValueError(f"an SMS body is at most {SMS_MAX_CHARACTERS} characters, this one has {len(body)}")


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@lru_cache(maxsize=1024)
def _compiled(source: str) -> Template:
    # Compiling a template costs far more than rendering it, and a handful of templates serve every booking.
    return _environment.from_string(source)


def render(source: str, context: dict) -> str:
    return _compiled(source).render(context)


# babel writes some spaces as no-break ones (English times: "2:00\u202fPM"). GSM 03.38, the SMS alphabet,
# has none of them, and one character outside it sends the whole SMS as UCS-2: 70 characters a segment
# instead of 160, so a confirmation that fits one SMS would cost two.
# babel's Catalan and Asturian dates write their elided article with a typographic apostrophe ("d’abril"),
# outside GSM too: it is written as the plain one.
_GSM_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2009": " ", "\u2019": "'"})

_COLUMNS = (
    "id", "tenant_id", "template_id", "appointment_id", "notification_type", "recipient_type", "recipient_id",
    "recipient_email", "recipient_phone", "channel", "subject", "body", "status", "dedupe_key",
)  # fmt: skip
# All of an event's rows in one statement, as one JSON array. Written out once: SQLAlchemy cannot cache a
# statement with ON CONFLICT and would compile it on every call.
_INSERT_NOTIFICATIONS = text(
    f"INSERT INTO notifications ({', '.join(_COLUMNS)})"
    f" SELECT {', '.join(_COLUMNS)} FROM jsonb_populate_recordset(NULL::notifications, CAST(:rows AS jsonb))"
    " ON CONFLICT (dedupe_key) DO NOTHING"
)


def queue_for_appointment(
    uow: UnitOfWork,
    tenant: Tenant,
    client: Client,
    service: Service,
    appointment: Appointment,
    notification_type: str,
    dedupe_suffix: str = "",
) -> None:
    """Pending notification rows for an appointment event, one per channel the client can be reached on.

    `dedupe_key` makes the same event impossible to queue twice (a retried job, two Beat runs).
    """
    channels = _channels_for(client)
    if not channels:
        return
    locale = client_locale(tenant, client)
    templates = _templates(uow, tenant, notification_type, channels, locale)
    contexts: dict[Locale, dict] = {}

    def context_in(writing: Locale) -> dict:
        if writing not in contexts:
            contexts[writing] = appointment_context(tenant, client, service, appointment, writing)
        return contexts[writing]

    chosen = {}
    for channel in channels:
        rendered = _rendered(templates.get(channel, []), context_in, locale)
        if rendered is None:  # none renders, or the channel has none at all (the system's were never seeded)
            log.error(
                "no %s template renders for %s of appointment %s", channel, notification_type, appointment.id
            )
        elif channel == "sms":
            template, subject, body = rendered
            chosen[channel] = (template, subject, body.translate(_GSM_SPACES))
        else:
            chosen[channel] = rendered
    rows = [
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant.id,
            "template_id": template.id,
            "appointment_id": appointment.id,
            "notification_type": notification_type,
            "recipient_type": "client",
            "recipient_id": client.id,
            "recipient_email": client.email if channel == "email" else None,
            "recipient_phone": client.phone if channel == "sms" else None,
            "channel": channel,
            "subject": subject,
            "body": body,
            "status": "pending",
            "dedupe_key": f"{appointment.id}:{notification_type}:{channel}{dedupe_suffix}",
        }
        for channel, (template, subject, body) in chosen.items()
    ]
    if rows:
        # An event queued already (a retried job, a second Beat run) keeps its row: its dedupe_key is taken.
        uow.session.execute(_INSERT_NOTIFICATIONS, {"rows": json.dumps(rows, default=str)})


def withdraw_pending(uow: UnitOfWork, appointment_id: uuid.UUID, notification_type: str | None = None) -> int:
    """Cancel what is still waiting to be sent about an appointment that changed (the old time's
    confirmation after a reschedule, any confirmation after a cancellation), or only its notifications
    of one type."""
    statement = update(Notification).where(
        Notification.appointment_id == appointment_id, Notification.status == "pending"
    )
    if notification_type is not None:
        statement = statement.where(Notification.notification_type == notification_type)
    return uow.session.execute(statement.values(status="cancelled")).rowcount


def event_suffix(occurrence: int) -> str:
    """Distinguishes repeated events of one kind on one appointment: the confirmation of its n-th move.

    Numbered, not timed: two moves at one instant would otherwise share a key, and the second move's
    confirmation would be dropped as a duplicate of the first one's, withdrawn a moment before."""
    return f"#{occurrence}"
