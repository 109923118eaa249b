"""Tenants and tenant membership (seed section 2).

As in the seed, except (docs/schema.md): timestamps are timestamptz; timezone, country, locale,
currency, settings, features, subscription_status, role, permissions, is_primary and the audit
columns are NOT NULL with the seed's defaults.

Revision ID: 002
Revises: 001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "002"
down_revision = "001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("slug", sa.String(length=50), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("business_type", sa.String(length=50), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=True),
        sa.Column("phone", sa.String(length=20), nullable=True),
        sa.Column("website_url", sa.Text(), nullable=True),
        sa.Column("address_line1", sa.String(length=200), nullable=True),
        sa.Column("address_line2", sa.String(length=200), nullable=True),
        sa.Column("city", sa.String(length=100), nullable=True),
        sa.Column("state", sa.String(length=100), nullable=True),
        sa.Column("postal_code", sa.String(length=20), nullable=True),
        sa.Column("country", sa.String(length=2), server_default="ES", nullable=False),
        sa.Column("timezone", sa.String(length=50), server_default="Europe/Madrid", nullable=False),
        sa.Column("locale", sa.String(length=10), server_default="es", nullable=False),
        sa.Column("currency", sa.String(length=3), server_default="EUR", nullable=False),
        sa.Column("settings", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("features", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("subscription_status", sa.String(length=20), server_default="trial", nullable=False),
        sa.Column("trial_ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_by", sa.Uuid(), nullable=True),
        sa.CheckConstraint(
            "business_type IN ('restaurant', 'clinic', 'salon', 'fitness', 'spa', 'dental', 'veterinary', 'other')",
            name="tenants_business_type_valid",
        ),
        sa.CheckConstraint("slug ~ '^[a-z0-9]+(?:-[a-z0-9]+)*$'", name="tenants_slug_format"),
        sa.CheckConstraint(
            "subscription_status IN ('trial', 'active', 'suspended', 'cancelled', 'past_due')",
            name="tenants_subscription_status_valid",
        ),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name="tenants_created_by_fkey"),
        sa.ForeignKeyConstraint(["deleted_by"], ["users.id"], name="tenants_deleted_by_fkey"),
        sa.ForeignKeyConstraint(["updated_by"], ["users.id"], name="tenants_updated_by_fkey"),
        sa.PrimaryKeyConstraint("id", name="tenants_pkey"),
        sa.UniqueConstraint("slug", name="tenants_slug_key"),
    )
    op.create_table(
        "tenant_users",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.String(length=20), server_default="member", nullable=False),
        sa.Column("permissions", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("is_primary", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_by", sa.Uuid(), nullable=True),
        sa.CheckConstraint(
            "role IN ('owner', 'admin', 'manager', 'staff', 'member')", name="tenant_users_role_valid"
        ),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name="tenant_users_created_by_fkey"),
        sa.ForeignKeyConstraint(["deleted_by"], ["users.id"], name="tenant_users_deleted_by_fkey"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="tenant_users_tenant_id_fkey", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="tenant_users_user_id_fkey", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="tenant_users_pkey"),
        sa.UniqueConstraint("tenant_id", "user_id", name="tenant_users_tenant_id_user_id_key"),
    )


def downgrade() -> None:
    op.drop_table("tenant_users")
    op.drop_table("tenants")
