"""The voice assistant's per-tenant configuration and its call log (seed section 4)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.models.base import Base, created_at, flag, jsonb_object, same_tenant, updated_at, uuid_pk

if TYPE_CHECKING:
    from core.models.scheduling import Appointment
    from core.models.tenancy import Tenant


class VapiConfiguration(Base):
    __tablename__ = "vapi_configurations"
    __table_args__ = (
        # Not in the seed: an incoming call names the assistant, not the tenant.
        Index("idx_vapi_configurations_assistant_id", "vapi_assistant_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), unique=True)

    vapi_phone_number: Mapped[str | None] = mapped_column(String(20))
    vapi_assistant_id: Mapped[str | None] = mapped_column(String(100))
    vapi_voice_id: Mapped[str | None] = mapped_column(String(100))

    assistant_name: Mapped[str] = mapped_column(String(100), server_default="Booking Assistant")
    assistant_greeting: Mapped[str | None] = mapped_column(Text)
    assistant_instructions: Mapped[str | None] = mapped_column(Text)

    language: Mapped[str] = mapped_column(String(10), server_default="es")
    voice_settings: Mapped[dict[str, Any]] = jsonb_object()

    business_context: Mapped[str | None] = mapped_column(Text)
    booking_instructions: Mapped[str | None] = mapped_column(Text)

    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret: Mapped[str | None] = mapped_column(String(100))

    max_call_duration_minutes: Mapped[int] = mapped_column(server_default=text("10"))
    enable_call_recording: Mapped[bool] = flag(False)
    enable_transcription: Mapped[bool] = flag(True)

    settings: Mapped[dict[str, Any]] = jsonb_object()
    is_active: Mapped[bool] = flag(True)

    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    updated_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))

    tenant: Mapped[Tenant] = relationship(back_populates="vapi_configuration")


class VapiCallLog(Base):
    __tablename__ = "vapi_call_logs"
    __table_args__ = (
        Index("idx_vapi_call_logs_tenant_created", "tenant_id", "created_at"),
        same_tenant("appointment_id", "appointments"),  # revision 015
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    # Unique (not in the seed): the end-of-call report is upserted by Vapi's call id.
    vapi_call_id: Mapped[str] = mapped_column(String(100), unique=True)

    caller_phone: Mapped[str | None] = mapped_column(String(20))
    call_duration_seconds: Mapped[int | None]
    call_status: Mapped[str | None] = mapped_column(String(20))

    transcript: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)
    intent_detected: Mapped[str | None] = mapped_column(String(100))
    entities_extracted: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    appointment_id: Mapped[uuid.UUID | None]
    booking_successful: Mapped[bool] = flag(False)
    booking_error: Mapped[str | None] = mapped_column(Text)

    call_started_at: Mapped[datetime | None]
    call_ended_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = created_at()

    # Joined by id alone: tenant_id is the call's own column.
    appointment: Mapped[Appointment | None] = relationship(
        primaryjoin="VapiCallLog.appointment_id == Appointment.id"
    )
