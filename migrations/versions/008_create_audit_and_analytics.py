"""The audit trail and business metrics (seed section 8).

Changes from the seed (docs/schema.md): timestamps are timestamptz; columns with a default are NOT NULL;
audit_logs.user_id is ON DELETE SET NULL so the trail outlives a deleted user.

Revision ID: 008
Revises: 007
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "008"
down_revision = "007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_logs",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("table_name", sa.String(length=100), nullable=False),
        sa.Column("record_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("user_email", sa.String(length=255), nullable=True),
        sa.Column("timestamp", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("ip_address", postgresql.INET(), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("old_values", postgresql.JSONB(), nullable=True),
        sa.Column("new_values", postgresql.JSONB(), nullable=True),
        sa.Column("context", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.CheckConstraint(
            "action IN ('CREATE', 'UPDATE', 'DELETE', 'LOGIN', 'LOGOUT', 'EXPORT', 'IMPORT')",
            name="audit_logs_action_valid",
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="audit_logs_tenant_id_fkey"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="audit_logs_user_id_fkey", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="audit_logs_pkey"),
    )
    op.create_table(
        "business_metrics",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("metric_date", sa.Date(), nullable=False),
        sa.Column("metric_type", sa.String(length=50), nullable=False),
        sa.Column("appointments_scheduled", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("appointments_completed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("appointments_cancelled", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("appointments_no_show", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "revenue_total", sa.Numeric(precision=10, scale=2), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "revenue_average_per_appointment",
            sa.Numeric(precision=10, scale=2),
            server_default=sa.text("0"),
            nullable=False,
        ),
        sa.Column("new_clients", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("returning_clients", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("staff_utilization_percentage", sa.Numeric(precision=5, scale=2), nullable=True),
        sa.Column("room_utilization_percentage", sa.Numeric(precision=5, scale=2), nullable=True),
        sa.Column(
            "custom_metrics", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "metric_type IN ('daily', 'weekly', 'monthly')", name="business_metrics_type_valid"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="business_metrics_tenant_id_fkey", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="business_metrics_pkey"),
        sa.UniqueConstraint(
            "tenant_id",
            "metric_date",
            "metric_type",
            name="business_metrics_tenant_id_metric_date_metric_type_key",
        ),
    )


def downgrade() -> None:
    op.drop_table("business_metrics")
    op.drop_table("audit_logs")
