"""Clients, appointments and the resources allocated to them.

Changes from the seed (docs/schema.md): timestamps are timestamptz; columns with a default are NOT NULL;
the client email/phone uniqueness per tenant holds among live (not soft-deleted) clients only;
appointment_resources gains allocated_during (the occupied half-open interval, buffer included),
active, units and exclusive, with checks tying allocated_during to allocated_start/allocated_end and
units > 0. The exclusion constraint over allocated_during comes in 009.

Revision ID: 005
Revises: 004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "005"
down_revision = "004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clients",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("first_name", sa.String(length=100), nullable=False),
        sa.Column("last_name", sa.String(length=100), nullable=True),
        sa.Column("email", sa.String(length=255), nullable=True),
        sa.Column("phone", sa.String(length=20), nullable=True),
        sa.Column("date_of_birth", sa.Date(), nullable=True),
        sa.Column("gender", sa.String(length=20), nullable=True),
        sa.Column("address_line1", sa.String(length=200), nullable=True),
        sa.Column("address_line2", sa.String(length=200), nullable=True),
        sa.Column("city", sa.String(length=100), nullable=True),
        sa.Column("postal_code", sa.String(length=20), nullable=True),
        sa.Column("preferred_language", sa.String(length=10), server_default="es", nullable=False),
        sa.Column(
            "communication_preferences",
            postgresql.JSONB(),
            server_default=sa.text('\'{"sms": false, "email": true}\'::jsonb'),
            nullable=False,
        ),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("allergies", sa.Text(), nullable=True),
        sa.Column("medical_conditions", sa.Text(), nullable=True),
        sa.Column("emergency_contact", postgresql.JSONB(), nullable=True),
        sa.Column("marketing_consent", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("source", sa.String(length=50), nullable=True),
        sa.Column("total_appointments", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "total_spent", sa.Numeric(precision=10, scale=2), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("last_appointment_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_by", sa.Uuid(), nullable=True),
        sa.CheckConstraint("phone IS NULL OR phone ~ '^\\+?[1-9]\\d{1,14}$'", name="clients_phone_format"),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name="clients_created_by_fkey"),
        sa.ForeignKeyConstraint(["deleted_by"], ["users.id"], name="clients_deleted_by_fkey"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="clients_tenant_id_fkey", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["updated_by"], ["users.id"], name="clients_updated_by_fkey"),
        sa.PrimaryKeyConstraint("id", name="clients_pkey"),
    )
    op.create_index(
        "clients_email_unique_per_tenant",
        "clients",
        ["tenant_id", "email"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_index(
        "clients_phone_unique_per_tenant",
        "clients",
        ["tenant_id", "phone"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "appointments",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("client_id", sa.Uuid(), nullable=False),
        sa.Column("scheduled_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scheduled_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actual_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("actual_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=20), server_default="scheduled", nullable=False),
        sa.Column(
            "status_changed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("status_changed_by", sa.Uuid(), nullable=True),
        sa.Column("booking_method", sa.String(length=20), server_default="online", nullable=False),
        sa.Column("booking_reference", sa.String(length=50), nullable=True),
        sa.Column("quoted_price", sa.Numeric(precision=10, scale=2), nullable=True),
        sa.Column("final_price", sa.Numeric(precision=10, scale=2), nullable=True),
        sa.Column(
            "paid_amount", sa.Numeric(precision=10, scale=2), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("payment_status", sa.String(length=20), server_default="pending", nullable=False),
        sa.Column("confirmation_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reminder_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("client_notes", sa.Text(), nullable=True),
        sa.Column("staff_notes", sa.Text(), nullable=True),
        sa.Column("cancellation_reason", sa.Text(), nullable=True),
        sa.Column("metadata", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_by", sa.Uuid(), nullable=True),
        sa.CheckConstraint(
            "payment_status IN ('pending', 'paid', 'partially_paid', 'refunded', 'failed')",
            name="appointments_payment_status_valid",
        ),
        sa.CheckConstraint(
            "status IN ('scheduled', 'confirmed', 'in_progress', 'completed', 'cancelled', 'no_show', 'rescheduled')",
            name="appointments_status_valid",
        ),
        sa.CheckConstraint("scheduled_end > scheduled_start", name="appointments_end_after_start"),
        sa.ForeignKeyConstraint(["client_id"], ["clients.id"], name="appointments_client_id_fkey"),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name="appointments_created_by_fkey"),
        sa.ForeignKeyConstraint(["deleted_by"], ["users.id"], name="appointments_deleted_by_fkey"),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], name="appointments_service_id_fkey"),
        sa.ForeignKeyConstraint(
            ["status_changed_by"], ["users.id"], name="appointments_status_changed_by_fkey"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="appointments_tenant_id_fkey", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["updated_by"], ["users.id"], name="appointments_updated_by_fkey"),
        sa.PrimaryKeyConstraint("id", name="appointments_pkey"),
        sa.UniqueConstraint("booking_reference", name="appointments_booking_reference_key"),
    )
    op.create_table(
        "appointment_resources",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("appointment_id", sa.Uuid(), nullable=False),
        sa.Column("resource_id", sa.Uuid(), nullable=False),
        sa.Column("allocated_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("allocated_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("allocated_during", postgresql.TSTZRANGE(), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("units", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("exclusive", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.CheckConstraint("allocated_end > allocated_start", name="appointment_resources_end_after_start"),
        sa.CheckConstraint(
            "lower(allocated_during) = allocated_start AND upper(allocated_during) >= allocated_end AND lower_inc(allocated_during) AND NOT upper_inc(allocated_during) AND NOT upper_inf(allocated_during)",
            name="appointment_resources_during_valid",
        ),
        sa.CheckConstraint("units > 0", name="appointment_resources_units_positive"),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["appointments.id"],
            name="appointment_resources_appointment_id_fkey",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name="appointment_resources_created_by_fkey"),
        sa.ForeignKeyConstraint(
            ["resource_id"], ["resources.id"], name="appointment_resources_resource_id_fkey"
        ),
        sa.PrimaryKeyConstraint("id", name="appointment_resources_pkey"),
    )


def downgrade() -> None:
    op.drop_table("appointment_resources")
    op.drop_table("appointments")
    op.drop_table("clients")
