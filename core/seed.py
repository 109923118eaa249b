"""Reference data every installation needs (plans, system notification templates) and the demo tenant.

Every function is idempotent: a row is found by its natural key (a plan by name, a system template by
type, channel and locale, a demo row by its fixed id), created if missing, and otherwise brought to the
values below attribute by attribute. An attribute that already has its value is not written, so a second
run issues no UPDATE at all and `updated_at` / `version` stay as they were. A few values are set only when
the row is created (trial dates, which depend on the day the demo was first seeded).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import select, text

from core.db import UnitOfWork
from core.models import (
    NotificationTemplate,
    Resource,
    ResourceSchedule,
    Service,
    ServiceResource,
    Subscription,
    SubscriptionPlan,
    Tenant,
    VapiConfiguration,
)

Model = TypeVar("Model")


@dataclass
class SeedCount:
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def add(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    def __str__(self) -> str:
        return f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged"


def _sync(row: Any, values: dict[str, Any]) -> bool:
    """Set only the attributes that differ; True if any did."""
    changed = False
    for name, value in values.items():
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed = True
    return changed


def _upsert_by_id(
    uow: UnitOfWork,
    model: type[Model],
    row_id: uuid.UUID,
    values: dict[str, Any],
    on_create: dict[str, Any] | None = None,
) -> tuple[Model, str]:
    row = uow.session.get(model, row_id)
    if row is None:
        row = model(id=row_id, **{**values, **(on_create or {})})
        uow.session.add(row)
        uow.session.flush()
        return row, "created"
    return row, "updated" if _sync(row, values) else "unchanged"


# --- plans -------------------------------------------------------------------------------------------

UNLIMITED = -1

PLANS: list[dict[str, Any]] = [
    {
        "name": "Starter",
        "description": "Perfect for small businesses",
        "price_monthly": Decimal("29.99"),
        "price_yearly": Decimal("299.99"),
        "max_services": 5,
        "max_resources": 3,
        "max_appointments_per_month": 100,
        "max_staff_users": 2,
        "sort_order": 1,
    },
    {
        "name": "Professional",
        "description": "For growing businesses",
        "price_monthly": Decimal("59.99"),
        "price_yearly": Decimal("599.99"),
        "max_services": 15,
        "max_resources": 10,
        "max_appointments_per_month": 500,
        "max_staff_users": 5,
        "sort_order": 2,
    },
    {
        "name": "Enterprise",
        "description": "For large operations",
        "price_monthly": Decimal("99.99"),
        "price_yearly": Decimal("999.99"),
        "max_services": UNLIMITED,
        "max_resources": UNLIMITED,
        "max_appointments_per_month": UNLIMITED,
        "max_staff_users": UNLIMITED,
        "sort_order": 3,
    },
]


def seed_plans(uow: UnitOfWork) -> SeedCount:
    count = SeedCount()
    for plan in PLANS:
        row = uow.session.scalars(
            select(SubscriptionPlan)
            .where(SubscriptionPlan.name == plan["name"])
            .order_by(SubscriptionPlan.created_at)
        ).first()
        if row is None:
            uow.session.add(SubscriptionPlan(**plan))
            count.add("created")
        else:
            count.add("updated" if _sync(row, plan) else "unchanged")
    uow.session.flush()
    return count


# --- system notification templates -------------------------------------------------------------------
#
# Jinja2, rendered sandboxed with StrictUndefined by core.notifications. Variables by type:
#   appointment_*: client_name, business_name, service_name, appointment_date, appointment_time,
#                  booking_reference, awaiting_confirmation (true while a service that requires the
#                  business's confirmation has not had it), cancellation_reason (may be empty)
#   payment_*, subscription_expiring: client_name, business_name, amount, plan_name
#   welcome: client_name, business_name;  password_reset: client_name, reset_link
# SMS bodies are kept short: with ordinary names they fit one 160-character message.

_REASON_ES = "{% if cancellation_reason is defined and cancellation_reason %} Motivo: {{ cancellation_reason }}.{% endif %}"
_REASON_EN = "{% if cancellation_reason is defined and cancellation_reason %} Reason: {{ cancellation_reason }}.{% endif %}"

# (type, locale) -> (name, email subject, email body, sms body)
TEMPLATES: dict[tuple[str, str], tuple[str, str, str, str]] = {
    ("appointment_confirmed", "es"): (
        "Cita confirmada",
        "{% if awaiting_confirmation %}Solicitud de cita recibida{% else %}Cita confirmada{% endif %}:"
        " {{ service_name }} el {{ appointment_date }}",
        "Hola {{ client_name }}:\n\n"
        "{% if awaiting_confirmation %}Hemos recibido tu solicitud de cita de {{ service_name }} en"
        " {{ business_name }} para el {{ appointment_date }} a las {{ appointment_time }}. Te avisaremos en"
        " cuanto el negocio la confirme."
        "{% else %}Tu cita de {{ service_name }} en {{ business_name }} está confirmada para el"
        " {{ appointment_date }} a las {{ appointment_time }}.{% endif %}\n\n"
        "Referencia de la reserva: {{ booking_reference }}\n\n"
        "Si no puedes venir, avísanos con antelación.\n\n{{ business_name }}",
        "{{ business_name }}: cita de {{ service_name }}"
        "{% if awaiting_confirmation %} solicitada para{% else %} confirmada{% endif %} el {{ appointment_date }}"
        " a las {{ appointment_time }}.{% if awaiting_confirmation %} Te avisaremos al confirmarla.{% endif %}"
        " Ref {{ booking_reference }}",
    ),
    ("appointment_confirmed", "en"): (
        "Appointment confirmed",
        "{% if awaiting_confirmation %}Appointment request received{% else %}Appointment confirmed{% endif %}:"
        " {{ service_name }} on {{ appointment_date }}",
        "Hello {{ client_name }},\n\n"
        "{% if awaiting_confirmation %}We have received your request for a {{ service_name }} appointment at"
        " {{ business_name }} on {{ appointment_date }} at {{ appointment_time }}. We will let you know as"
        " soon as the business confirms it."
        "{% else %}Your {{ service_name }} appointment at {{ business_name }} is confirmed for"
        " {{ appointment_date }} at {{ appointment_time }}.{% endif %}\n\n"
        "Booking reference: {{ booking_reference }}\n\n"
        "If you cannot make it, please let us know in advance.\n\n{{ business_name }}",
        "{{ business_name }}: {{ service_name }}"
        "{% if awaiting_confirmation %} requested for{% else %} confirmed for{% endif %} {{ appointment_date }}"
        " at {{ appointment_time }}.{% if awaiting_confirmation %} We will confirm it soon.{% endif %}"
        " Ref {{ booking_reference }}",
    ),
    ("appointment_reminder", "es"): (
        "Recordatorio de cita",
        "Recordatorio: {{ service_name }} el {{ appointment_date }} a las {{ appointment_time }}",
        "Hola {{ client_name }}:\n\n"
        "Te recordamos tu cita de {{ service_name }} en {{ business_name }} el {{ appointment_date }} "
        "a las {{ appointment_time }}.\n\n"
        "Referencia de la reserva: {{ booking_reference }}\n\n¡Te esperamos!\n\n{{ business_name }}",
        "Recordatorio: {{ service_name }} el {{ appointment_date }} a las {{ appointment_time }} "
        "en {{ business_name }}. Ref {{ booking_reference }}",
    ),
    ("appointment_reminder", "en"): (
        "Appointment reminder",
        "Reminder: {{ service_name }} on {{ appointment_date }} at {{ appointment_time }}",
        "Hello {{ client_name }},\n\n"
        "This is a reminder of your {{ service_name }} appointment at {{ business_name }} on "
        "{{ appointment_date }} at {{ appointment_time }}.\n\n"
        "Booking reference: {{ booking_reference }}\n\nSee you soon!\n\n{{ business_name }}",
        "Reminder: {{ service_name }} on {{ appointment_date }} at {{ appointment_time }} "
        "at {{ business_name }}. Ref {{ booking_reference }}",
    ),
    ("appointment_cancelled", "es"): (
        "Cita cancelada",
        "Cita cancelada: {{ service_name }} el {{ appointment_date }}",
        "Hola {{ client_name }}:\n\n"
        "Tu cita de {{ service_name }} en {{ business_name }} del {{ appointment_date }} a las "
        "{{ appointment_time }} ha sido cancelada." + _REASON_ES + "\n\n"
        "Referencia de la reserva: {{ booking_reference }}\n\n"
        "Puedes reservar otra cita cuando quieras.\n\n{{ business_name }}",
        "{{ business_name }}: tu cita de {{ service_name }} del {{ appointment_date }} "
        "a las {{ appointment_time }} ha sido cancelada. Ref {{ booking_reference }}",
    ),
    ("appointment_cancelled", "en"): (
        "Appointment cancelled",
        "Appointment cancelled: {{ service_name }} on {{ appointment_date }}",
        "Hello {{ client_name }},\n\n"
        "Your {{ service_name }} appointment at {{ business_name }} on {{ appointment_date }} at "
        "{{ appointment_time }} has been cancelled." + _REASON_EN + "\n\n"
        "Booking reference: {{ booking_reference }}\n\n"
        "You are welcome to book another time.\n\n{{ business_name }}",
        "{{ business_name }}: your {{ service_name }} on {{ appointment_date }} "
        "at {{ appointment_time }} was cancelled. Ref {{ booking_reference }}",
    ),
    ("payment_successful", "es"): (
        "Pago recibido",
        "Pago recibido: {{ amount }}",
        "Hola {{ client_name }}:\n\n"
        "Hemos recibido tu pago de {{ amount }} por el plan {{ plan_name }} de {{ business_name }}. "
        "Gracias.\n\nVoiceAppoint",
        "VoiceAppoint: pago de {{ amount }} recibido (plan {{ plan_name }}). Gracias.",
    ),
    ("payment_successful", "en"): (
        "Payment received",
        "Payment received: {{ amount }}",
        "Hello {{ client_name }},\n\n"
        "We have received your payment of {{ amount }} for the {{ plan_name }} plan of {{ business_name }}. "
        "Thank you.\n\nVoiceAppoint",
        "VoiceAppoint: payment of {{ amount }} received ({{ plan_name }} plan). Thank you.",
    ),
    ("payment_failed", "es"): (
        "Pago fallido",
        "No hemos podido cobrar {{ amount }}",
        "Hola {{ client_name }}:\n\n"
        "No hemos podido cobrar el pago de {{ amount }} del plan {{ plan_name }} de {{ business_name }}. "
        "Revisa tu método de pago para que el servicio no se interrumpa.\n\nVoiceAppoint",
        "VoiceAppoint: no pudimos cobrar {{ amount }} (plan {{ plan_name }}). Revisa tu método de pago.",
    ),
    ("payment_failed", "en"): (
        "Payment failed",
        "We could not charge {{ amount }}",
        "Hello {{ client_name }},\n\n"
        "We could not collect the payment of {{ amount }} for the {{ plan_name }} plan of {{ business_name }}. "
        "Please check your payment method so that the service is not interrupted.\n\nVoiceAppoint",
        "VoiceAppoint: we could not charge {{ amount }} ({{ plan_name }} plan). Please check your payment method.",
    ),
    ("subscription_expiring", "es"): (
        "Suscripción a punto de vencer",
        "Tu plan {{ plan_name }} está a punto de vencer",
        "Hola {{ client_name }}:\n\n"
        "El plan {{ plan_name }} de {{ business_name }} vence pronto. Renuévalo para seguir recibiendo "
        "reservas por teléfono y en línea.\n\nVoiceAppoint",
        "VoiceAppoint: el plan {{ plan_name }} de {{ business_name }} vence pronto. Renuévalo para no perder reservas.",
    ),
    ("subscription_expiring", "en"): (
        "Subscription expiring",
        "Your {{ plan_name }} plan is about to expire",
        "Hello {{ client_name }},\n\n"
        "The {{ plan_name }} plan of {{ business_name }} expires soon. Renew it to keep taking bookings "
        "by phone and online.\n\nVoiceAppoint",
        "VoiceAppoint: the {{ plan_name }} plan of {{ business_name }} expires soon. Renew to keep taking bookings.",
    ),
    ("welcome", "es"): (
        "Bienvenida",
        "Bienvenido a {{ business_name }}",
        "Hola {{ client_name }}:\n\n"
        "Te damos la bienvenida a {{ business_name }}. Ya puedes reservar tus citas por teléfono o en línea."
        "\n\n{{ business_name }}",
        "Hola {{ client_name }}, bienvenido a {{ business_name }}. Ya puedes reservar por teléfono o en línea.",
    ),
    ("welcome", "en"): (
        "Welcome",
        "Welcome to {{ business_name }}",
        "Hello {{ client_name }},\n\n"
        "Welcome to {{ business_name }}. You can now book your appointments by phone or online."
        "\n\n{{ business_name }}",
        "Hi {{ client_name }}, welcome to {{ business_name }}. You can now book by phone or online.",
    ),
    ("password_reset", "es"): (
        "Restablecer contraseña",
        "Restablece tu contraseña",
        "Hola {{ client_name }}:\n\n"
        "Hemos recibido una solicitud para restablecer tu contraseña. Usa este enlace, válido durante "
        "una hora:\n\n{{ reset_link }}\n\nSi no lo has pedido tú, ignora este mensaje.\n\nVoiceAppoint",
        "VoiceAppoint: restablece tu contraseña en {{ reset_link }} (válido 1 hora). Si no lo pediste, ignóralo.",
    ),
    ("password_reset", "en"): (
        "Password reset",
        "Reset your password",
        "Hello {{ client_name }},\n\n"
        "We received a request to reset your password. Use this link, valid for one hour:\n\n"
        "{{ reset_link }}\n\nIf you did not ask for it, ignore this message.\n\nVoiceAppoint",
        "VoiceAppoint: reset your password at {{ reset_link }} (valid 1 hour). If you did not ask, ignore this.",
    ),
}

TEMPLATE_LOCALES = ("es", "en")


def system_template_rows() -> list[dict[str, Any]]:
    """Every system template as column values: each type x locale x channel (email, sms)."""
    rows = []
    for (notification_type, locale), (name, subject, email_body, sms_body) in TEMPLATES.items():
        for channel, subject_template, body_template in (
            ("email", subject, email_body),
            ("sms", None, sms_body),
        ):
            rows.append(
                {
                    "type": notification_type,
                    "channel": channel,
                    "locale": locale,
                    "name": f"{name} ({channel}, {locale})",
                    "subject_template": subject_template,
                    "body_template": body_template,
                    "is_system_default": True,
                    "is_active": True,
                }
            )
    return rows


def seed_system_templates(uow: UnitOfWork) -> SeedCount:
    count = SeedCount()
    for values in system_template_rows():
        row = uow.session.scalars(
            select(NotificationTemplate).where(
                NotificationTemplate.tenant_id.is_(None),
                NotificationTemplate.type == values["type"],
                NotificationTemplate.channel == values["channel"],
                NotificationTemplate.locale == values["locale"],
            )
        ).first()
        if row is None:
            uow.session.add(NotificationTemplate(tenant_id=None, **values))
            count.add("created")
        else:
            count.add("updated" if _sync(row, values) else "unchanged")
    uow.session.flush()
    return count


# --- the demo tenant ---------------------------------------------------------------------------------

DEMO_TENANT_ID = uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")
DEMO_TENANT_SLUG = "bella-hair-salon"
DEMO_TIMEZONE = "Europe/Madrid"
DEMO_SERVICE_IDS = {
    "haircut": uuid.UUID("0b5e0001-0000-4000-8000-000000000001"),
    "full-color": uuid.UUID("0b5e0001-0000-4000-8000-000000000002"),
    "manicure": uuid.UUID("0b5e0001-0000-4000-8000-000000000003"),
}
DEMO_RESOURCE_IDS = {
    "maria": uuid.UUID("0b5e0002-0000-4000-8000-000000000001"),
    "main-chair": uuid.UUID("0b5e0002-0000-4000-8000-000000000002"),
    "manicure-table": uuid.UUID("0b5e0002-0000-4000-8000-000000000003"),
}
DEMO_VAPI_CONFIGURATION_ID = uuid.UUID("0b5e0003-0000-4000-8000-000000000001")
DEMO_SUBSCRIPTION_ID = uuid.UUID("0b5e0004-0000-4000-8000-000000000001")
# Schedules and service-resource links get ids derived from what they are, so they are fixed too.
_DEMO_NAMESPACE = uuid.UUID("0b5e0000-0000-4000-8000-000000000000")

MONDAY_TO_SATURDAY = [1, 2, 3, 4, 5, 6]  # day_of_week: 0 = Sunday
TRIAL_DAYS = 14

DEMO_SERVICES: dict[str, dict[str, Any]] = {
    "haircut": {
        "name": "Haircut",
        "description": "Custom cut with wash",
        "category": "Haircuts",
        "duration_minutes": 45,
        "base_price": Decimal("25.00"),
        "buffer_time_minutes": 5,
    },
    "full-color": {
        "name": "Full Color",
        "description": "Full color from roots to ends",
        "category": "Color",
        "duration_minutes": 120,
        "base_price": Decimal("65.00"),
        "buffer_time_minutes": 10,
    },
    "manicure": {
        "name": "Manicure",
        "description": "Complete manicure with polish",
        "category": "Nails",
        "duration_minutes": 60,
        "base_price": Decimal("20.00"),
        "buffer_time_minutes": 5,
    },
}

DEMO_RESOURCES: dict[str, dict[str, Any]] = {
    "maria": {
        "name": "María García",
        "type": "staff",
        "description": "Senior stylist specialized in cuts and color",
        "capacity": None,
    },
    "main-chair": {
        "name": "Main Chair",
        "type": "room",
        "description": "Primary workstation with mirror and wash unit",
        "capacity": 1,
    },
    "manicure-table": {
        "name": "Manicure Table",
        "type": "equipment",
        "description": "Specialized table for manicure services",
        "capacity": 1,
    },
}

# resource -> [(days, start, end)], local wall-clock time in Europe/Madrid
DEMO_SCHEDULES: dict[str, list[tuple[list[int], time, time]]] = {
    "maria": [
        ([1, 2, 3, 4, 5], time(9, 0), time(14, 0)),
        ([1, 2, 3, 4, 5], time(15, 0), time(19, 0)),
        ([6], time(9, 0), time(14, 0)),
    ],
    "main-chair": [(MONDAY_TO_SATURDAY, time(9, 0), time(20, 0))],
    "manicure-table": [(MONDAY_TO_SATURDAY, time(9, 0), time(20, 0))],
}

# service -> resources it needs (all required)
DEMO_SERVICE_RESOURCES: dict[str, list[str]] = {
    "haircut": ["maria", "main-chair"],
    "full-color": ["maria", "main-chair"],
    "manicure": ["manicure-table"],
}


def _demo_id(*parts: object) -> uuid.UUID:
    return uuid.uuid5(_DEMO_NAMESPACE, "/".join(str(part) for part in parts))


def seed_demo(uow: UnitOfWork, now: datetime | None = None) -> SeedCount:
    """Bella Hair Salon with its services, staff, chairs, schedules, Vapi assistant and a trial subscription."""
    now = now or datetime.now(UTC)
    count = SeedCount()
    # Still in system mode (the caller's): plans are global, and only system mode creates a tenant.
    professional = _plan_named(uow, "Professional")
    if professional is None:
        seed_plans(uow)
        professional = _plan_named(uow, "Professional")
    assert professional is not None

    _, outcome = _upsert_by_id(
        uow,
        Tenant,
        DEMO_TENANT_ID,
        {
            "slug": DEMO_TENANT_SLUG,
            "name": "Bella Hair Salon",
            "business_type": "salon",
            "email": "info@bellahair.com",
            "phone": "+34612345678",
            "timezone": DEMO_TIMEZONE,
            "locale": "es",
            "currency": "EUR",
            "country": "ES",
            "settings": {"slot_step_minutes": 15},
            "subscription_status": "trial",
            # A demo deleted by hand comes back: `up` would otherwise show a key that only ever gets 401.
            "deleted_at": None,
        },
        on_create={"trial_ends_at": now + timedelta(days=TRIAL_DAYS)},
    )
    count.add(outcome)
    uow.session.flush()
    uow.set_tenant(DEMO_TENANT_ID)

    for key, service in DEMO_SERVICES.items():
        _, outcome = _upsert_by_id(
            uow,
            Service,
            DEMO_SERVICE_IDS[key],
            {
                **service,
                "tenant_id": DEMO_TENANT_ID,
                "slug": key,
                "price_currency": "EUR",
                "available_days": MONDAY_TO_SATURDAY,
                "available_hours": {"start": "09:00", "end": "20:00"},
                "is_active": True,
            },
        )
        count.add(outcome)

    for key, resource in DEMO_RESOURCES.items():
        _, outcome = _upsert_by_id(
            uow,
            Resource,
            DEMO_RESOURCE_IDS[key],
            {**resource, "tenant_id": DEMO_TENANT_ID, "is_active": True},
        )
        count.add(outcome)

    for key, blocks in DEMO_SCHEDULES.items():
        for days, start, end in blocks:
            for day in days:
                _, outcome = _upsert_by_id(
                    uow,
                    ResourceSchedule,
                    _demo_id("schedule", key, day, start),
                    {
                        "resource_id": DEMO_RESOURCE_IDS[key],
                        "day_of_week": day,
                        "start_time": start,
                        "end_time": end,
                        # In effect since always: the demo must be bookable on any date a test picks.
                        "effective_from": None,
                        "effective_until": None,
                        "is_active": True,
                    },
                )
                count.add(outcome)

    for service_key, resource_keys in DEMO_SERVICE_RESOURCES.items():
        for order, resource_key in enumerate(resource_keys):
            _, outcome = _upsert_by_id(
                uow,
                ServiceResource,
                _demo_id("service-resource", service_key, resource_key),
                {
                    "service_id": DEMO_SERVICE_IDS[service_key],
                    "resource_id": DEMO_RESOURCE_IDS[resource_key],
                    "quantity_required": 1,
                    "is_required": True,
                    "preference_order": order,
                },
            )
            count.add(outcome)

    _, outcome = _upsert_by_id(
        uow,
        VapiConfiguration,
        DEMO_VAPI_CONFIGURATION_ID,
        {
            "tenant_id": DEMO_TENANT_ID,
            "assistant_name": "Lucía",
            "assistant_greeting": "¡Hola! Has llamado a Bella Hair Salon. Soy Lucía, ¿en qué puedo ayudarte?",
            "assistant_instructions": (
                "Eres la recepcionista de Bella Hair Salon en Madrid. Ayuda a reservar, cambiar o cancelar "
                "citas de corte, color y manicura. Confirma siempre el día, la hora y el nombre del cliente."
            ),
            "language": "es",
            "business_context": "Peluquería en Madrid. Abierta de lunes a sábado de 9:00 a 20:00.",
            "booking_instructions": "Pide nombre y teléfono. Ofrece el hueco libre más cercano si el pedido no lo está.",
            "is_active": True,
        },
    )
    count.add(outcome)

    trial_end = now + timedelta(days=TRIAL_DAYS)
    _, outcome = _upsert_by_id(
        uow,
        Subscription,
        DEMO_SUBSCRIPTION_ID,
        {
            "tenant_id": DEMO_TENANT_ID,
            "plan_id": professional.id,
            "status": "trialing",
            "billing_period": "monthly",
        },
        on_create={"current_period_start": now, "current_period_end": trial_end, "trial_end": trial_end},
    )
    count.add(outcome)

    uow.session.flush()
    return count


def _plan_named(uow: UnitOfWork, name: str) -> SubscriptionPlan | None:
    return uow.session.scalars(
        select(SubscriptionPlan).where(SubscriptionPlan.name == name).order_by(SubscriptionPlan.created_at)
    ).first()


SEED_LOCK = 0x56410003  # an advisory-lock key of its own ("VA" and a number, as core.db's and core.booking's)


def seed_all(uow: UnitOfWork, *, demo: bool = False, now: datetime | None = None) -> str:
    """Everything `voiceappoint seed [--demo]` inserts; returns a one-line summary."""
    # Rows are found by name or id before they are inserted: two seeds at once (replicas starting together)
    # would both find nothing and insert twice. The second waits here for the first's commit instead.
    uow.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEED_LOCK})
    parts = [f"plans: {seed_plans(uow)}", f"system templates: {seed_system_templates(uow)}"]
    if demo:
        parts.append(f"demo tenant {DEMO_TENANT_SLUG}: {seed_demo(uow, now)}")
    return "; ".join(parts)
