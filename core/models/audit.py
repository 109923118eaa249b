"""The audit trail (written by the audit trigger of revision 010) and aggregated business metrics (seed section 8)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Numeric, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, created_at, jsonb_object, uuid_pk


class AuditLog(Base):
    __tablename__ = "audit_logs"
    __table_args__ = (
        CheckConstraint(
            "action IN ('CREATE', 'UPDATE', 'DELETE', 'LOGIN', 'LOGOUT', 'EXPORT', 'IMPORT')",
            name="audit_logs_action_valid",
        ),
        Index("idx_audit_logs_tenant_timestamp", "tenant_id", "timestamp"),
        Index("idx_audit_logs_table_record", "table_name", "record_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id"))

    action: Mapped[str] = mapped_column(String(20))
    table_name: Mapped[str] = mapped_column(String(100))
    record_id: Mapped[uuid.UUID | None]

    # SET NULL (the seed has no action): the trail outlives the user; user_email keeps who it was.
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    user_email: Mapped[str | None] = mapped_column(String(255))

    timestamp: Mapped[datetime] = mapped_column(server_default=text("now()"))
    ip_address: Mapped[str | None] = mapped_column(INET)
    user_agent: Mapped[str | None] = mapped_column(Text)

    old_values: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    new_values: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    context: Mapped[dict[str, Any]] = jsonb_object()


class BusinessMetric(Base):
    __tablename__ = "business_metrics"
    __table_args__ = (
        UniqueConstraint("tenant_id", "metric_date", "metric_type"),
        CheckConstraint("metric_type IN ('daily', 'weekly', 'monthly')", name="business_metrics_type_valid"),
        Index("idx_business_metrics_tenant_date", "tenant_id", "metric_date"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))

    metric_date: Mapped[date]
    metric_type: Mapped[str] = mapped_column(String(50))

    appointments_scheduled: Mapped[int] = mapped_column(server_default=text("0"))
    appointments_completed: Mapped[int] = mapped_column(server_default=text("0"))
    appointments_cancelled: Mapped[int] = mapped_column(server_default=text("0"))
    appointments_no_show: Mapped[int] = mapped_column(server_default=text("0"))

    revenue_total: Mapped[Decimal] = mapped_column(server_default=text("0"))
    revenue_average_per_appointment: Mapped[Decimal] = mapped_column(server_default=text("0"))

    new_clients: Mapped[int] = mapped_column(server_default=text("0"))
    returning_clients: Mapped[int] = mapped_column(server_default=text("0"))

    staff_utilization_percentage: Mapped[Decimal | None] = mapped_column(Numeric(5, 2))
    room_utilization_percentage: Mapped[Decimal | None] = mapped_column(Numeric(5, 2))

    custom_metrics: Mapped[dict[str, Any]] = jsonb_object()

    created_at: Mapped[datetime] = created_at()
