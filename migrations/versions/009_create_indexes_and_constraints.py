"""Indexes and the business constraints of the seed's "OPTIMIZED INDEXES" and "CONSTRAINTS & VALIDATIONS".

Changes from the seed (docs/schema.md has the reasons):
- the unique index on appointment_resources(resource_id, allocated_start) becomes the exclusion constraint
  appointment_resources_no_overlap over allocated_during (half-open, buffer included), for active
  allocations of exclusive resources only;
- the unique index on resource_blocks(resource_id, start_datetime) becomes the exclusion constraint
  resource_blocks_no_overlap: no two non-deleted blocks of one resource overlap;
- appointments_business_hours and appointments_future_only are not created (a CHECK must not read the
  clock, and business hours are a local wall-clock rule the core checks in the tenant's time zone);
- idx_clients_tenant_email / idx_clients_tenant_phone are not created: the partial unique indexes of
  revision 005 have the same columns and predicate and serve the same lookups;
- idx_resource_availability is made partial (WHERE active): it would otherwise duplicate
  idx_appointment_resources_resource_time column for column.

Revision ID: 009
Revises: 008
"""

import sqlalchemy as sa
from alembic import op

revision = "009"
down_revision = "008"
branch_labels = None
depends_on = None

NOT_DELETED = "deleted_at IS NULL"
ACTIVE_NOT_DELETED = "is_active = true AND deleted_at IS NULL"

# (name, table, columns, partial-index predicate), in the seed's order.
SEED_INDEXES = [
    ("idx_users_email_active", "users", ["email"], ACTIVE_NOT_DELETED),
    ("idx_users_phone_active", "users", ["phone"], ACTIVE_NOT_DELETED),
    ("idx_user_sessions_user_id", "user_sessions", ["user_id"], None),
    ("idx_user_sessions_token_jti", "user_sessions", ["token_jti"], None),
    ("idx_tenants_slug", "tenants", ["slug"], NOT_DELETED),
    ("idx_tenant_users_tenant_id", "tenant_users", ["tenant_id"], NOT_DELETED),
    ("idx_tenant_users_user_id", "tenant_users", ["user_id"], NOT_DELETED),
    ("idx_appointments_tenant_date", "appointments", ["tenant_id", "scheduled_start"], NOT_DELETED),
    ("idx_appointments_service_date", "appointments", ["service_id", "scheduled_start"], NOT_DELETED),
    ("idx_appointments_status_date", "appointments", ["status", "scheduled_start"], NOT_DELETED),
    (
        "idx_appointment_resources_resource_time",
        "appointment_resources",
        ["resource_id", "allocated_start", "allocated_end"],
        None,
    ),
    (
        "idx_resource_blocks_resource_time",
        "resource_blocks",
        ["resource_id", "start_datetime", "end_datetime"],
        NOT_DELETED,
    ),
    ("idx_clients_tenant_name", "clients", ["tenant_id", "first_name", "last_name"], NOT_DELETED),
    ("idx_services_tenant_active", "services", ["tenant_id"], ACTIVE_NOT_DELETED),
    ("idx_resources_tenant_active", "resources", ["tenant_id"], ACTIVE_NOT_DELETED),
    ("idx_resources_type_tenant", "resources", ["tenant_id", "type"], ACTIVE_NOT_DELETED),
    ("idx_subscriptions_tenant_status", "subscriptions", ["tenant_id", "status"], None),
    ("idx_payments_subscription_status", "payments", ["subscription_id", "status"], None),
    ("idx_notifications_status_created", "notifications", ["status", "created_at"], None),
    ("idx_notifications_recipient", "notifications", ["recipient_type", "recipient_id"], None),
    ("idx_audit_logs_tenant_timestamp", "audit_logs", ["tenant_id", "timestamp"], None),
    ("idx_audit_logs_table_record", "audit_logs", ["table_name", "record_id"], None),
    ("idx_business_metrics_tenant_date", "business_metrics", ["tenant_id", "metric_date"], None),
    (
        "idx_availability_lookup",
        "appointments",
        ["tenant_id", "service_id", "scheduled_start", "scheduled_end", "status"],
        "status NOT IN ('cancelled', 'no_show') AND deleted_at IS NULL",
    ),
    (
        "idx_resource_availability",
        "appointment_resources",
        ["resource_id", "allocated_start", "allocated_end"],
        "active",
    ),
    ("idx_client_appointments", "appointments", ["client_id", sa.text("scheduled_start DESC")], NOT_DELETED),
    (
        "idx_staff_schedule",
        "resource_schedules",
        ["resource_id", "day_of_week", "start_time", "end_time"],
        "is_active = true",
    ),
]

# Not in the seed: each serves a lookup the application makes (see docs/schema.md).
ADDED_INDEXES = [
    ("idx_login_attempts_email_time", "login_attempts", ["email", "attempted_at"], None),
    ("idx_login_attempts_ip_time", "login_attempts", ["ip_address", "attempted_at"], None),
    ("idx_appointment_resources_appointment_id", "appointment_resources", ["appointment_id"], None),
    ("idx_vapi_configurations_assistant_id", "vapi_configurations", ["vapi_assistant_id"], None),
    ("idx_vapi_call_logs_tenant_created", "vapi_call_logs", ["tenant_id", "created_at"], None),
    ("idx_notification_templates_lookup", "notification_templates", ["tenant_id", "type", "channel"], None),
    ("idx_notifications_appointment_id", "notifications", ["appointment_id"], None),
    ("idx_notifications_provider_message_id", "notifications", ["provider_message_id"], None),
]


def upgrade() -> None:
    for name, table, columns, where in SEED_INDEXES + ADDED_INDEXES:
        op.create_index(name, table, columns, postgresql_where=sa.text(where) if where else None)

    op.create_check_constraint(
        "subscriptions_period_valid", "subscriptions", "current_period_end > current_period_start"
    )
    op.create_check_constraint("payments_amount_positive", "payments", "amount > 0")

    # The double-booking guard, last word over every process and retry (SQLSTATE 23P01 on conflict).
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    op.execute(
        """
        ALTER TABLE appointment_resources ADD CONSTRAINT appointment_resources_no_overlap
        EXCLUDE USING gist (resource_id WITH =, allocated_during WITH &&) WHERE (active AND exclusive)
        """
    )
    op.execute(
        """
        ALTER TABLE resource_blocks ADD CONSTRAINT resource_blocks_no_overlap
        EXCLUDE USING gist (resource_id WITH =, tstzrange(start_datetime, end_datetime, '[)') WITH &&)
        WHERE (deleted_at IS NULL)
        """
    )


def downgrade() -> None:
    op.drop_constraint("resource_blocks_no_overlap", "resource_blocks")
    op.drop_constraint("appointment_resources_no_overlap", "appointment_resources")
    op.execute("DROP EXTENSION IF EXISTS btree_gist")
    op.drop_constraint("payments_amount_positive", "payments")
    op.drop_constraint("subscriptions_period_valid", "subscriptions")
    for name, table, _columns, _where in reversed(SEED_INDEXES + ADDED_INDEXES):
        op.drop_index(name, table_name=table)
