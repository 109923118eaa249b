"""Subscription plans, subscriptions and payments (seed section 3).

As in the seed, except (docs/schema.md): timestamps are timestamptz; plan limits, currency, flags,
usage_data and created_at/updated_at are NOT NULL with the seed's defaults. The seed's
subscriptions_period_valid and payments_amount_positive are added in 009, where the seed puts them.

Revision ID: 003
Revises: 002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "003"
down_revision = "002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscription_plans",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("price_monthly", sa.Numeric(precision=10, scale=2), nullable=False),
        sa.Column("price_yearly", sa.Numeric(precision=10, scale=2), nullable=True),
        sa.Column("currency", sa.String(length=3), server_default="EUR", nullable=False),
        sa.Column("max_services", sa.Integer(), server_default=sa.text("10"), nullable=False),
        sa.Column("max_resources", sa.Integer(), server_default=sa.text("5"), nullable=False),
        sa.Column("max_appointments_per_month", sa.Integer(), server_default=sa.text("100"), nullable=False),
        sa.Column("max_staff_users", sa.Integer(), server_default=sa.text("3"), nullable=False),
        sa.Column("features", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("stripe_price_id_monthly", sa.String(length=100), nullable=True),
        sa.Column("stripe_price_id_yearly", sa.String(length=100), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("sort_order", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="subscription_plans_pkey"),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("plan_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("billing_period", sa.String(length=10), nullable=False),
        sa.Column("stripe_subscription_id", sa.String(length=100), nullable=True),
        sa.Column("stripe_customer_id", sa.String(length=100), nullable=True),
        sa.Column("current_period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("current_period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trial_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("usage_data", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "billing_period IN ('monthly', 'yearly')", name="subscriptions_billing_period_valid"
        ),
        sa.CheckConstraint(
            "status IN ('active', 'cancelled', 'past_due', 'unpaid', 'trialing')",
            name="subscriptions_status_valid",
        ),
        sa.ForeignKeyConstraint(["plan_id"], ["subscription_plans.id"], name="subscriptions_plan_id_fkey"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="subscriptions_tenant_id_fkey", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="subscriptions_pkey"),
        sa.UniqueConstraint("stripe_subscription_id", name="subscriptions_stripe_subscription_id_key"),
    )
    op.create_table(
        "payments",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("subscription_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=10, scale=2), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("stripe_payment_intent_id", sa.String(length=100), nullable=True),
        sa.Column("stripe_charge_id", sa.String(length=100), nullable=True),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed', 'cancelled', 'refunded')",
            name="payments_status_valid",
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"], ["subscriptions.id"], name="payments_subscription_id_fkey"
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="payments_tenant_id_fkey"),
        sa.PrimaryKeyConstraint("id", name="payments_pkey"),
    )


def downgrade() -> None:
    op.drop_table("payments")
    op.drop_table("subscriptions")
    op.drop_table("subscription_plans")
