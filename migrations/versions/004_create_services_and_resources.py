"""Services and resources, and how resources are scheduled: service_resources, resource_schedules, resource_blocks.

Changes from the seed (docs/schema.md): timestamps are timestamptz; columns with a default are NOT NULL
(except resource_schedules.effective_from, where NULL means "since always"); UNIQUE(tenant_id, slug) on
services is a unique index over live rows only; resource_blocks.recurrence_rule is an RFC 5545 RRULE
string (TEXT) with CHECK is_recurring = (recurrence_rule IS NOT NULL); new checks:
services_buffer_non_negative, resources_capacity_positive, resource_schedules_effective_range_valid.
The overlap guard of resource_blocks (an exclusion constraint) comes in 009.

Revision ID: 004
Revises: 003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "004"
down_revision = "003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("category", sa.String(length=50), nullable=True),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("buffer_time_minutes", sa.Integer(), server_default=sa.text("5"), nullable=False),
        sa.Column("base_price", sa.Numeric(precision=10, scale=2), nullable=True),
        sa.Column("price_currency", sa.String(length=3), server_default="EUR", nullable=False),
        sa.Column("price_varies", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("max_capacity", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("min_advance_booking_hours", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("max_advance_booking_days", sa.Integer(), server_default=sa.text("30"), nullable=False),
        sa.Column(
            "available_days",
            postgresql.JSONB(),
            server_default=sa.text("'[1, 2, 3, 4, 5]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "available_hours",
            postgresql.JSONB(),
            server_default=sa.text('\'{"end": "18:00", "start": "09:00"}\'::jsonb'),
            nullable=False,
        ),
        sa.Column("requires_confirmation", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("allows_cancellation", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("cancellation_policy_hours", sa.Integer(), server_default=sa.text("24"), nullable=False),
        sa.Column("color_hex", sa.String(length=7), server_default="#3B82F6", nullable=False),
        sa.Column("icon", sa.String(length=50), nullable=True),
        sa.Column("sort_order", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("slug", sa.String(length=100), nullable=True),
        sa.Column("meta_description", sa.Text(), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("is_featured", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_by", sa.Uuid(), nullable=True),
        sa.CheckConstraint("base_price IS NULL OR base_price >= 0", name="services_price_non_negative"),
        sa.CheckConstraint("buffer_time_minutes >= 0", name="services_buffer_non_negative"),
        sa.CheckConstraint("duration_minutes > 0", name="services_duration_positive"),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name="services_created_by_fkey"),
        sa.ForeignKeyConstraint(["deleted_by"], ["users.id"], name="services_deleted_by_fkey"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="services_tenant_id_fkey", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["updated_by"], ["users.id"], name="services_updated_by_fkey"),
        sa.PrimaryKeyConstraint("id", name="services_pkey"),
    )
    op.create_index(
        "services_tenant_id_slug_key",
        "services",
        ["tenant_id", "slug"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "resources",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("type", sa.String(length=50), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("staff_user_id", sa.Uuid(), nullable=True),
        sa.Column("staff_specialties", postgresql.JSONB(), nullable=True),
        sa.Column("staff_bio", sa.Text(), nullable=True),
        sa.Column("email", sa.String(length=255), nullable=True),
        sa.Column("phone", sa.String(length=20), nullable=True),
        sa.Column(
            "default_schedule", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("hourly_rate", sa.Numeric(precision=10, scale=2), nullable=True),
        sa.Column("capacity", sa.Integer(), nullable=True),
        sa.Column("location", sa.String(length=100), nullable=True),
        sa.Column("equipment_features", postgresql.JSONB(), nullable=True),
        sa.Column("avatar_url", sa.Text(), nullable=True),
        sa.Column("color_hex", sa.String(length=7), server_default="#6B7280", nullable=False),
        sa.Column("sort_order", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_by", sa.Uuid(), nullable=True),
        sa.CheckConstraint(
            "type IN ('staff', 'room', 'equipment', 'vehicle', 'other')", name="resources_type_valid"
        ),
        sa.CheckConstraint("capacity IS NULL OR capacity > 0", name="resources_capacity_positive"),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name="resources_created_by_fkey"),
        sa.ForeignKeyConstraint(["deleted_by"], ["users.id"], name="resources_deleted_by_fkey"),
        sa.ForeignKeyConstraint(["staff_user_id"], ["users.id"], name="resources_staff_user_id_fkey"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="resources_tenant_id_fkey", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["updated_by"], ["users.id"], name="resources_updated_by_fkey"),
        sa.PrimaryKeyConstraint("id", name="resources_pkey"),
    )
    op.create_table(
        "service_resources",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("resource_id", sa.Uuid(), nullable=False),
        sa.Column("quantity_required", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("is_required", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("preference_order", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("quantity_required > 0", name="service_resources_quantity_positive"),
        sa.ForeignKeyConstraint(
            ["resource_id"], ["resources.id"], name="service_resources_resource_id_fkey", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name="service_resources_service_id_fkey", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="service_resources_pkey"),
        sa.UniqueConstraint("service_id", "resource_id", name="service_resources_service_id_resource_id_key"),
    )
    op.create_table(
        "resource_schedules",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("resource_id", sa.Uuid(), nullable=False),
        sa.Column("day_of_week", sa.Integer(), nullable=False),
        sa.Column("start_time", sa.Time(), nullable=False),
        sa.Column("end_time", sa.Time(), nullable=False),
        sa.Column("effective_from", sa.Date(), server_default=sa.text("CURRENT_DATE"), nullable=True),
        sa.Column("effective_until", sa.Date(), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("day_of_week BETWEEN 0 AND 6", name="resource_schedules_day_valid"),
        sa.CheckConstraint(
            "effective_until IS NULL OR effective_from IS NULL OR effective_until >= effective_from",
            name="resource_schedules_effective_range_valid",
        ),
        sa.CheckConstraint("end_time > start_time", name="resource_schedules_end_after_start"),
        sa.ForeignKeyConstraint(
            ["resource_id"], ["resources.id"], name="resource_schedules_resource_id_fkey", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="resource_schedules_pkey"),
    )
    op.create_table(
        "resource_blocks",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("resource_id", sa.Uuid(), nullable=False),
        sa.Column("start_datetime", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_datetime", sa.DateTime(timezone=True), nullable=False),
        sa.Column("block_type", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("is_recurring", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("recurrence_rule", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_by", sa.Uuid(), nullable=True),
        sa.CheckConstraint(
            "block_type IN ('vacation', 'sick_leave', 'maintenance', 'break', 'training', 'other')",
            name="resource_blocks_type_valid",
        ),
        sa.CheckConstraint("end_datetime > start_datetime", name="resource_blocks_end_after_start"),
        sa.CheckConstraint(
            "is_recurring = (recurrence_rule IS NOT NULL)", name="resource_blocks_recurrence_consistent"
        ),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name="resource_blocks_created_by_fkey"),
        sa.ForeignKeyConstraint(["deleted_by"], ["users.id"], name="resource_blocks_deleted_by_fkey"),
        sa.ForeignKeyConstraint(
            ["resource_id"], ["resources.id"], name="resource_blocks_resource_id_fkey", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="resource_blocks_pkey"),
    )


def downgrade() -> None:
    op.drop_table("resource_blocks")
    op.drop_table("resource_schedules")
    op.drop_table("service_resources")
    op.drop_table("resources")
    op.drop_table("services")
