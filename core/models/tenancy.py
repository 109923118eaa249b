"""Tenants (the businesses) and who may act for them (seed section 2)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from core.models.base import (
    Audited,
    Base,
    SoftDeleted,
    created_at,
    flag,
    jsonb_object,
    known_time_zone,
    updated_at,
    uuid_pk,
)

if TYPE_CHECKING:
    from core.models.auth import User
    from core.models.scheduling import Client, Resource, Service
    from core.models.vapi import VapiConfiguration


class Tenant(Audited, SoftDeleted, Base):
    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("slug ~ '^[a-z0-9]+(?:-[a-z0-9]+)*$'", name="tenants_slug_format"),
        CheckConstraint(
            "business_type IN ('restaurant', 'clinic', 'salon', 'fitness', 'spa', 'dental', 'veterinary', 'other')",
            name="tenants_business_type_valid",
        ),
        CheckConstraint(
            "subscription_status IN ('trial', 'active', 'suspended', 'cancelled', 'past_due')",
            name="tenants_subscription_status_valid",
        ),
        Index("idx_tenants_slug", "slug", postgresql_where=text("deleted_at IS NULL")),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    slug: Mapped[str] = mapped_column(String(50), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    business_type: Mapped[str] = mapped_column(String(50))

    email: Mapped[str | None] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(20))
    website_url: Mapped[str | None] = mapped_column(Text)

    address_line1: Mapped[str | None] = mapped_column(String(200))
    address_line2: Mapped[str | None] = mapped_column(String(200))
    city: Mapped[str | None] = mapped_column(String(100))
    state: Mapped[str | None] = mapped_column(String(100))
    postal_code: Mapped[str | None] = mapped_column(String(20))
    country: Mapped[str] = mapped_column(String(2), server_default="ES")

    # IANA zone name; every local date and wall-clock schedule of the tenant is read in it.
    timezone: Mapped[str] = mapped_column(String(50), server_default="Europe/Madrid")

    @validates("timezone")
    def _known_time_zone(self, _key: str, name: Any) -> Any:
        return known_time_zone(name)

    locale: Mapped[str] = mapped_column(String(10), server_default="es")
    currency: Mapped[str] = mapped_column(String(3), server_default="EUR")

    settings: Mapped[dict[str, Any]] = jsonb_object()
    features: Mapped[dict[str, Any]] = jsonb_object()

    subscription_status: Mapped[str] = mapped_column(String(20), server_default="trial")
    trial_ends_at: Mapped[datetime | None]

    services: Mapped[list[Service]] = relationship(back_populates="tenant", passive_deletes=True)
    resources: Mapped[list[Resource]] = relationship(back_populates="tenant", passive_deletes=True)
    clients: Mapped[list[Client]] = relationship(back_populates="tenant", passive_deletes=True)
    members: Mapped[list[TenantUser]] = relationship(back_populates="tenant", passive_deletes=True)
    vapi_configuration: Mapped[VapiConfiguration | None] = relationship(
        back_populates="tenant", uselist=False, passive_deletes=True
    )


class TenantUser(Base):
    __tablename__ = "tenant_users"
    __table_args__ = (
        UniqueConstraint("tenant_id", "user_id"),
        CheckConstraint(
            "role IN ('owner', 'admin', 'manager', 'staff', 'member')", name="tenant_users_role_valid"
        ),
        Index("idx_tenant_users_tenant_id", "tenant_id", postgresql_where=text("deleted_at IS NULL")),
        Index("idx_tenant_users_user_id", "user_id", postgresql_where=text("deleted_at IS NULL")),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(20), server_default="member")
    permissions: Mapped[dict[str, Any]] = jsonb_object()
    is_primary: Mapped[bool] = flag(False)

    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    deleted_at: Mapped[datetime | None]
    deleted_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))

    tenant: Mapped[Tenant] = relationship(back_populates="members")
    user: Mapped[User] = relationship(foreign_keys=[user_id])
