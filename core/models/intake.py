"""Intake jobs: every accepted booking/reschedule/cancel request, recorded before it is enqueued (revision 011)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, created_at, same_tenant, updated_at, uuid_pk


class IntakeJob(Base):
    __tablename__ = "intake_jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        CheckConstraint(
            "kind IN ('booking', 'reschedule', 'cancel', 'vapi_booking')", name="intake_jobs_kind_valid"
        ),
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')", name="intake_jobs_status_valid"
        ),
        # The sweeper re-enqueues old queued jobs; finished jobs are the bulk and stay out of this index.
        Index(
            "idx_intake_jobs_pending",
            "status",
            "created_at",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        # Revision 015: the appointment is the job's tenant's; deleting it unlinks the job only.
        same_tenant("appointment_id", "appointments", ondelete="SET NULL (appointment_id)"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(30))
    queue: Mapped[str] = mapped_column(String(30), server_default="bookings")
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(20), server_default="queued")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    appointment_id: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()
    # Revision 026: the sweeper re-sends a queued job by it, so every job has one.
    enqueued_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
