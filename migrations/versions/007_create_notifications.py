"""Notification templates and the notification queue (seed section 5).

Changes from the seed (docs/schema.md): timestamps are timestamptz; columns with a default are NOT NULL;
notifications gain the lead's columns (appointment_id, notification_type, dedupe_key, attempts,
provider_message_id, updated_at), the status 'sending', and checks on channel, notification_type and
attempts.

Revision ID: 007
Revises: 006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "007"
down_revision = "006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_templates",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("type", sa.String(length=50), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("subject_template", sa.Text(), nullable=True),
        sa.Column("body_template", sa.Text(), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("is_system_default", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "channel IN ('email', 'sms', 'push', 'webhook')", name="notification_templates_channel_valid"
        ),
        sa.CheckConstraint(
            "type IN ('appointment_confirmed', 'appointment_reminder', 'appointment_cancelled', 'payment_successful', 'payment_failed', 'subscription_expiring', 'welcome', 'password_reset')",
            name="notification_templates_type_valid",
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="notification_templates_tenant_id_fkey"),
        sa.PrimaryKeyConstraint("id", name="notification_templates_pkey"),
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("template_id", sa.Uuid(), nullable=True),
        sa.Column("recipient_type", sa.String(length=20), nullable=False),
        sa.Column("recipient_id", sa.Uuid(), nullable=True),
        sa.Column("recipient_email", sa.String(length=255), nullable=True),
        sa.Column("recipient_phone", sa.String(length=20), nullable=True),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), server_default="pending", nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("metadata", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("appointment_id", sa.Uuid(), nullable=True),
        sa.Column("notification_type", sa.String(length=50), nullable=True),
        sa.Column("dedupe_key", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("provider_message_id", sa.String(length=100), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "channel IN ('email', 'sms', 'push', 'webhook')", name="notifications_channel_valid"
        ),
        sa.CheckConstraint(
            "notification_type IS NULL OR notification_type IN ('appointment_confirmed', 'appointment_reminder', 'appointment_cancelled', 'payment_successful', 'payment_failed', 'subscription_expiring', 'welcome', 'password_reset')",
            name="notifications_type_valid",
        ),
        sa.CheckConstraint(
            "recipient_type IN ('user', 'client', 'staff')", name="notifications_recipient_type_valid"
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'sent', 'delivered', 'failed', 'cancelled')",
            name="notifications_status_valid",
        ),
        sa.CheckConstraint("attempts >= 0", name="notifications_attempts_non_negative"),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["appointments.id"],
            name="notifications_appointment_id_fkey",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["template_id"], ["notification_templates.id"], name="notifications_template_id_fkey"
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="notifications_tenant_id_fkey"),
        sa.PrimaryKeyConstraint("id", name="notifications_pkey"),
        sa.UniqueConstraint("dedupe_key", name="notifications_dedupe_key_key"),
    )


def downgrade() -> None:
    op.drop_table("notifications")
    op.drop_table("notification_templates")
