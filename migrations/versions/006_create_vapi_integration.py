"""Vapi configuration and call logs (seed section 4).

vapi_call_logs references appointments, created in 005. Changes from the seed (docs/schema.md):
timestamps are timestamptz; columns with a default are NOT NULL; vapi_call_id is UNIQUE because the
end-of-call report is upserted by it.

Revision ID: 006
Revises: 005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "006"
down_revision = "005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vapi_configurations",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("vapi_phone_number", sa.String(length=20), nullable=True),
        sa.Column("vapi_assistant_id", sa.String(length=100), nullable=True),
        sa.Column("vapi_voice_id", sa.String(length=100), nullable=True),
        sa.Column(
            "assistant_name", sa.String(length=100), server_default="Booking Assistant", nullable=False
        ),
        sa.Column("assistant_greeting", sa.Text(), nullable=True),
        sa.Column("assistant_instructions", sa.Text(), nullable=True),
        sa.Column("language", sa.String(length=10), server_default="es", nullable=False),
        sa.Column(
            "voice_settings", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("business_context", sa.Text(), nullable=True),
        sa.Column("booking_instructions", sa.Text(), nullable=True),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("webhook_secret", sa.String(length=100), nullable=True),
        sa.Column("max_call_duration_minutes", sa.Integer(), server_default=sa.text("10"), nullable=False),
        sa.Column("enable_call_recording", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("enable_transcription", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("settings", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name="vapi_configurations_created_by_fkey"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="vapi_configurations_tenant_id_fkey", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["updated_by"], ["users.id"], name="vapi_configurations_updated_by_fkey"),
        sa.PrimaryKeyConstraint("id", name="vapi_configurations_pkey"),
        sa.UniqueConstraint("tenant_id", name="vapi_configurations_tenant_id_key"),
    )
    op.create_table(
        "vapi_call_logs",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("vapi_call_id", sa.String(length=100), nullable=False),
        sa.Column("caller_phone", sa.String(length=20), nullable=True),
        sa.Column("call_duration_seconds", sa.Integer(), nullable=True),
        sa.Column("call_status", sa.String(length=20), nullable=True),
        sa.Column("transcript", sa.Text(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("intent_detected", sa.String(length=100), nullable=True),
        sa.Column("entities_extracted", postgresql.JSONB(), nullable=True),
        sa.Column("appointment_id", sa.Uuid(), nullable=True),
        sa.Column("booking_successful", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("booking_error", sa.Text(), nullable=True),
        sa.Column("call_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("call_ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["appointment_id"], ["appointments.id"], name="vapi_call_logs_appointment_id_fkey"
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="vapi_call_logs_tenant_id_fkey"),
        sa.PrimaryKeyConstraint("id", name="vapi_call_logs_pkey"),
        sa.UniqueConstraint("vapi_call_id", name="vapi_call_logs_vapi_call_id_key"),
    )


def downgrade() -> None:
    op.drop_table("vapi_call_logs")
    op.drop_table("vapi_configurations")
