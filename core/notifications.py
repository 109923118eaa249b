"""Notifications are written as `pending` rows inside the business transaction and sent later.

Nothing here talks to a provider: a booking never waits on SendGrid or Twilio, and a failed send
never undoes a booking.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_time
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import or_, select, update

from core.db import UnitOfWork
from core.models import Appointment, Client, Notification, NotificationTemplate, Service, Tenant

# Templates may be edited by businesses: render them sandboxed, and fail loudly on unknown variables.
_templates = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def appointment_context(tenant: Tenant, client: Client, service: Service, appointment: Appointment) -> dict:
    locale = client.preferred_language or tenant.locale or "es"
    local_start = appointment.scheduled_start.astimezone(ZoneInfo(tenant.timezone))
    return {
        "client_name": client.first_name,
        "business_name": tenant.name,
        "service_name": service.name,
        "appointment_date": format_date(local_start.date(), format="long", locale=locale),
        "appointment_time": format_time(local_start.time(), format="short", locale=locale),
        "booking_reference": appointment.booking_reference,
        "cancellation_reason": appointment.cancellation_reason or "",
    }


def _channels_for(client: Client) -> list[str]:
    preferences = client.communication_preferences or {}
    channels = []
    if client.email and preferences.get("email", True):
        channels.append("email")
    # A client we can only reach by phone still gets the SMS, whatever the default preference says.
    if client.phone and (preferences.get("sms") or not channels):
        channels.append("sms")
    return channels


def _template(
    uow: UnitOfWork, tenant: Tenant, notification_type: str, channel: str, locale: str
) -> NotificationTemplate | None:
    """The tenant's own template wins over the system one; the client's language wins over English."""
    candidates = uow.session.scalars(
        select(NotificationTemplate).where(
            NotificationTemplate.type == notification_type,
            NotificationTemplate.channel == channel,
            NotificationTemplate.is_active.is_(True),
            or_(NotificationTemplate.tenant_id == tenant.id, NotificationTemplate.tenant_id.is_(None)),
        )
    ).all()

    def rank(template: NotificationTemplate) -> tuple[int, int]:
        return (
            0 if template.tenant_id is not None else 1,
            0 if template.locale == locale else 1 if template.locale == "en" else 2,
        )

    return min(candidates, key=rank, default=None)


def queue_for_appointment(
    uow: UnitOfWork,
    tenant: Tenant,
    client: Client,
    service: Service,
    appointment: Appointment,
    notification_type: str,
    dedupe_suffix: str = "",
) -> list[Notification]:
    """Pending notification rows for an appointment event, one per channel the client can be reached on.

    `dedupe_key` makes the same event impossible to queue twice (a retried job, two Beat runs).
    """
    context = appointment_context(tenant, client, service, appointment)
    locale = client.preferred_language or tenant.locale or "es"
    queued = []
    for channel in _channels_for(client):
        template = _template(uow, tenant, notification_type, channel, locale)
        if template is None:
            continue
        dedupe_key = f"{appointment.id}:{notification_type}:{channel}{dedupe_suffix}"
        if uow.session.scalar(select(Notification.id).where(Notification.dedupe_key == dedupe_key)):
            continue
        notification = Notification(
            id=uuid.uuid4(),
            tenant_id=tenant.id,
            template_id=template.id,
            appointment_id=appointment.id,
            notification_type=notification_type,
            recipient_type="client",
            recipient_id=client.id,
            recipient_email=client.email if channel == "email" else None,
            recipient_phone=client.phone if channel == "sms" else None,
            channel=channel,
            subject=_templates.from_string(template.subject_template).render(context)
            if template.subject_template
            else None,
            body=_templates.from_string(template.body_template).render(context),
            status="pending",
            dedupe_key=dedupe_key,
        )
        uow.session.add(notification)
        queued.append(notification)
    return queued


def withdraw_pending(uow: UnitOfWork, appointment_id: uuid.UUID) -> int:
    """Cancel what is still waiting to be sent about an appointment that changed (the old time's
    confirmation after a reschedule, any confirmation after a cancellation)."""
    return uow.session.execute(
        update(Notification)
        .where(Notification.appointment_id == appointment_id, Notification.status == "pending")
        .values(status="cancelled")
    ).rowcount


def event_suffix(moment: datetime) -> str:
    """Distinguishes repeated events of one kind on one appointment (a second reschedule confirmation)."""
    return f"@{moment.isoformat()}"
