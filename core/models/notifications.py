"""Notification templates and the outgoing notification queue (seed section 5)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.models.base import Base, created_at, flag, jsonb_object, same_tenant, updated_at, uuid_pk

NOTIFICATION_TYPES = (
    "appointment_confirmed",
    "appointment_reminder",
    "appointment_cancelled",
    "payment_successful",
    "payment_failed",
    "subscription_expiring",
    "welcome",
    "password_reset",
)
CHANNELS = ("email", "sms", "push", "webhook")

_TYPES_SQL = ", ".join(f"'{value}'" for value in NOTIFICATION_TYPES)
_CHANNELS_SQL = ", ".join(f"'{value}'" for value in CHANNELS)


class NotificationTemplate(Base):
    __tablename__ = "notification_templates"
    __table_args__ = (
        CheckConstraint(f"type IN ({_TYPES_SQL})", name="notification_templates_type_valid"),
        CheckConstraint(f"channel IN ({_CHANNELS_SQL})", name="notification_templates_channel_valid"),
        # Not in the seed: picking the template for (tenant or system, type, channel).
        Index("idx_notification_templates_lookup", "tenant_id", "type", "channel"),
        # Revision 012: one template per type, channel and language, for the system and for each tenant.
        Index(
            "notification_templates_system_key",
            "type",
            "channel",
            "locale",
            unique=True,
            postgresql_where=text("tenant_id IS NULL"),
        ),
        Index(
            "notification_templates_tenant_key",
            "tenant_id",
            "type",
            "channel",
            "locale",
            unique=True,
            postgresql_where=text("tenant_id IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id"))  # NULL: system template

    name: Mapped[str] = mapped_column(String(100))
    type: Mapped[str] = mapped_column(String(50))
    channel: Mapped[str] = mapped_column(String(20))
    locale: Mapped[str] = mapped_column(String(10), server_default="es")

    subject_template: Mapped[str | None] = mapped_column(Text)
    body_template: Mapped[str] = mapped_column(Text)

    is_active: Mapped[bool] = flag(True)
    is_system_default: Mapped[bool] = flag(False)

    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'sending', 'sent', 'delivered', 'failed', 'cancelled')",
            name="notifications_status_valid",
        ),
        CheckConstraint(
            "recipient_type IN ('user', 'client', 'staff')", name="notifications_recipient_type_valid"
        ),
        CheckConstraint(f"channel IN ({_CHANNELS_SQL})", name="notifications_channel_valid"),
        CheckConstraint(
            f"notification_type IS NULL OR notification_type IN ({_TYPES_SQL})",
            name="notifications_type_valid",
        ),
        CheckConstraint("attempts >= 0", name="notifications_attempts_non_negative"),
        # The composite key on (tenant_id, appointment_id) checks nothing while tenant_id is NULL.
        CheckConstraint(
            "appointment_id IS NULL OR tenant_id IS NOT NULL", name="notifications_appointment_has_tenant"
        ),
        Index("idx_notifications_status_created", "status", "created_at"),
        Index("idx_notifications_recipient", "recipient_type", "recipient_id"),
        Index("idx_notifications_appointment_id", "appointment_id"),
        Index("idx_notifications_provider_message_id", "provider_message_id"),
        # Revision 015: the appointment is the notification's tenant's; deleting it unlinks the
        # notification and keeps its tenant_id (notifications_appointment_has_tenant above makes sure
        # there is a tenant_id to check).
        same_tenant("appointment_id", "appointments", ondelete="SET NULL (appointment_id)"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id"))
    template_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("notification_templates.id"))

    recipient_type: Mapped[str] = mapped_column(String(20))
    recipient_id: Mapped[uuid.UUID | None]
    recipient_email: Mapped[str | None] = mapped_column(String(255))
    recipient_phone: Mapped[str | None] = mapped_column(String(20))

    channel: Mapped[str] = mapped_column(String(20))
    subject: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)

    status: Mapped[str] = mapped_column(String(20), server_default="pending")
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    failure_reason: Mapped[str | None] = mapped_column(Text)

    metadata_: Mapped[dict[str, Any]] = jsonb_object(name="metadata")
    created_at: Mapped[datetime] = created_at()

    # Added by the lead for the send pipeline (see docs/schema.md).
    appointment_id: Mapped[uuid.UUID | None]
    notification_type: Mapped[str | None] = mapped_column(String(50))
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    provider_message_id: Mapped[str | None] = mapped_column(String(100))
    updated_at: Mapped[datetime] = updated_at()

    template: Mapped[NotificationTemplate | None] = relationship()
