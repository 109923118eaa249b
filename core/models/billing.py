"""Plans, subscriptions and payments (seed section 3)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.models.base import Base, created_at, flag, jsonb_object, same_tenant, updated_at, uuid_pk


class SubscriptionPlan(Base):
    __tablename__ = "subscription_plans"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    price_monthly: Mapped[Decimal]
    price_yearly: Mapped[Decimal | None]
    currency: Mapped[str] = mapped_column(String(3), server_default="EUR")

    # -1 means unlimited (the seed's Enterprise plan).
    max_services: Mapped[int] = mapped_column(server_default=text("10"))
    max_resources: Mapped[int] = mapped_column(server_default=text("5"))
    max_appointments_per_month: Mapped[int] = mapped_column(server_default=text("100"))
    max_staff_users: Mapped[int] = mapped_column(server_default=text("3"))

    features: Mapped[dict[str, Any]] = jsonb_object()

    stripe_price_id_monthly: Mapped[str | None] = mapped_column(String(100))
    stripe_price_id_yearly: Mapped[str | None] = mapped_column(String(100))

    is_active: Mapped[bool] = flag(True)
    sort_order: Mapped[int] = mapped_column(server_default=text("0"))

    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        CheckConstraint(
            "status IN ('active', 'cancelled', 'past_due', 'unpaid', 'trialing')",
            name="subscriptions_status_valid",
        ),
        CheckConstraint("billing_period IN ('monthly', 'yearly')", name="subscriptions_billing_period_valid"),
        CheckConstraint("current_period_end > current_period_start", name="subscriptions_period_valid"),
        Index("idx_subscriptions_tenant_status", "tenant_id", "status"),
        UniqueConstraint("tenant_id", "id"),  # the target of same_tenant() references (revision 015)
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    plan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subscription_plans.id"))

    status: Mapped[str] = mapped_column(String(20))
    billing_period: Mapped[str] = mapped_column(String(10))

    stripe_subscription_id: Mapped[str | None] = mapped_column(String(100), unique=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(100))

    current_period_start: Mapped[datetime]
    current_period_end: Mapped[datetime]
    trial_end: Mapped[datetime | None]

    usage_data: Mapped[dict[str, Any]] = jsonb_object()

    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()
    cancelled_at: Mapped[datetime | None]

    plan: Mapped[SubscriptionPlan] = relationship()
    # Joined by id alone: tenant_id is the payment's own column.
    payments: Mapped[list[Payment]] = relationship(
        back_populates="subscription", primaryjoin="Subscription.id == Payment.subscription_id"
    )


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed', 'cancelled', 'refunded')",
            name="payments_status_valid",
        ),
        CheckConstraint("amount > 0", name="payments_amount_positive"),
        Index("idx_payments_subscription_status", "subscription_id", "status"),
        same_tenant("subscription_id", "subscriptions"),  # revision 015
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    subscription_id: Mapped[uuid.UUID]
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))

    amount: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20))

    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(100))
    stripe_charge_id: Mapped[str | None] = mapped_column(String(100))

    paid_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    failure_reason: Mapped[str | None] = mapped_column(Text)

    created_at: Mapped[datetime] = created_at()

    subscription: Mapped[Subscription] = relationship(
        back_populates="payments", primaryjoin="Payment.subscription_id == Subscription.id"
    )
