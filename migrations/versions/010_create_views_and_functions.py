"""Trigger functions, their triggers, and the three reporting views.

Changes from the seed (docs/schema.md has the reasons):
- update_updated_at_column() (updated_at + version) runs on every table that has both columns, and a
  second function, set_updated_at(), on every table that has updated_at but no version;
- audit_trigger_function() writes CREATE/UPDATE/DELETE, takes the acting user from the transaction
  setting app.user_id (NULL when unset), keeps old and new values of an update, reads tenant_id and id
  through to_jsonb so it works on any table, and is SECURITY DEFINER so the audit row is written whatever
  the application role may do; it runs on appointments and payments (the seed) and on clients,
  services, resources and subscriptions;
- the views use the tenant's time zone for dates and never multiply rows.

Revision ID: 010
Revises: 009
"""

from alembic import op

revision = "010"
down_revision = "009"
branch_labels = None
depends_on = None

VERSIONED_TABLES = ["users", "tenants", "services", "resources", "clients", "appointments"]
UPDATED_AT_ONLY_TABLES = [
    "tenant_users",
    "subscription_plans",
    "subscriptions",
    "vapi_configurations",
    "notification_templates",
    "notifications",
    "resource_schedules",
]
AUDITED_TABLES = ["appointments", "payments", "clients", "services", "resources", "subscriptions"]

UPDATE_UPDATED_AT_COLUMN = """
CREATE FUNCTION update_updated_at_column() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at = now();
    NEW.version = OLD.version + 1;
    RETURN NEW;
END;
$$
"""

SET_UPDATED_AT = """
CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END;
$$
"""

# The acting user comes from `SET LOCAL app.user_id` (UnitOfWork does it); an id that is not a
# user is kept in context rather than failing the audited write on the foreign key.
# clock_timestamp(), not now(): several changes in one transaction keep their order in the trail.
AUDIT_TRIGGER_FUNCTION = """
CREATE FUNCTION audit_trigger_function() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    old_row jsonb := CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END;
    new_row jsonb := CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END;
    setting_user uuid := NULLIF(current_setting('app.user_id', true), '')::uuid;
    acting_user uuid;
    acting_email varchar(255);
BEGIN
    IF setting_user IS NOT NULL THEN
        SELECT u.id, u.email INTO acting_user, acting_email FROM users u WHERE u.id = setting_user;
    END IF;
    INSERT INTO audit_logs (
        tenant_id, action, table_name, record_id, user_id, user_email, old_values, new_values, timestamp, context
    ) VALUES (
        (COALESCE(new_row, old_row) ->> 'tenant_id')::uuid,
        CASE TG_OP WHEN 'INSERT' THEN 'CREATE' ELSE TG_OP END,
        TG_TABLE_NAME,
        (COALESCE(new_row, old_row) ->> 'id')::uuid,
        acting_user,
        acting_email,
        old_row,
        new_row,
        clock_timestamp(),
        CASE WHEN setting_user IS NOT NULL AND acting_user IS NULL
             THEN jsonb_build_object('unknown_user_id', setting_user)
             ELSE '{}'::jsonb END
    );
    RETURN NULL;
END;
$$
"""

# One row per active resource and each of its active schedule rows in effect on the tenant's local
# today (a resource without one still gets a row, with NULL times). is_available: no non-deleted block
# contains the current instant, blocks being half-open [start, end); recurring blocks count by their
# first occurrence only (their later occurrences are expanded by core.availability).
RESOURCE_AVAILABILITY = """
CREATE VIEW resource_availability AS
SELECT
    r.id,
    r.tenant_id,
    r.name,
    r.type,
    rs.day_of_week,
    rs.start_time,
    rs.end_time,
    NOT EXISTS (
        SELECT 1
        FROM resource_blocks rb
        WHERE rb.resource_id = r.id
          AND rb.deleted_at IS NULL
          AND rb.start_datetime <= now()
          AND now() < rb.end_datetime
    ) AS is_available
FROM resources r
JOIN tenants t ON t.id = r.tenant_id
LEFT JOIN resource_schedules rs
    ON rs.resource_id = r.id
   AND rs.is_active
   AND (rs.effective_from IS NULL OR rs.effective_from <= (now() AT TIME ZONE t.timezone)::date)
   AND (rs.effective_until IS NULL OR rs.effective_until >= (now() AT TIME ZONE t.timezone)::date)
WHERE r.is_active AND r.deleted_at IS NULL
"""

# appointment_date is the local date in the tenant's time zone.
APPOINTMENT_STATS = """
CREATE VIEW appointment_stats AS
SELECT
    a.tenant_id,
    a.service_id,
    s.name AS service_name,
    (a.scheduled_start AT TIME ZONE t.timezone)::date AS appointment_date,
    count(*) AS total_appointments,
    count(*) FILTER (WHERE a.status = 'completed') AS completed_appointments,
    count(*) FILTER (WHERE a.status = 'cancelled') AS cancelled_appointments,
    count(*) FILTER (WHERE a.status = 'no_show') AS no_show_appointments,
    sum(a.final_price) FILTER (WHERE a.status = 'completed') AS revenue,
    avg(a.final_price) FILTER (WHERE a.status = 'completed') AS avg_price
FROM appointments a
JOIN services s ON s.id = a.service_id
JOIN tenants t ON t.id = a.tenant_id
WHERE a.deleted_at IS NULL
GROUP BY a.tenant_id, a.service_id, s.name, (a.scheduled_start AT TIME ZONE t.timezone)::date
"""

# One row per non-deleted tenant; every count is its own subquery so nothing multiplies.
# "today" and "upcoming" (from the start of today on, as in the seed) are measured in the tenant's
# time zone; the subscription shown is the active one with the latest period end.
TENANT_DASHBOARD = """
CREATE VIEW tenant_dashboard AS
SELECT
    t.id AS tenant_id,
    t.name AS business_name,
    t.subscription_status,
    (SELECT count(*) FROM services s WHERE s.tenant_id = t.id AND s.deleted_at IS NULL) AS total_services,
    (SELECT count(*) FROM resources r WHERE r.tenant_id = t.id AND r.deleted_at IS NULL) AS total_resources,
    (SELECT count(*) FROM clients c WHERE c.tenant_id = t.id AND c.deleted_at IS NULL) AS total_clients,
    (SELECT count(*) FROM appointments a
      WHERE a.tenant_id = t.id AND a.deleted_at IS NULL
        AND a.scheduled_start >= ((now() AT TIME ZONE t.timezone)::date)::timestamp AT TIME ZONE t.timezone
    ) AS upcoming_appointments,
    (SELECT count(*) FROM appointments a
      WHERE a.tenant_id = t.id AND a.deleted_at IS NULL
        AND (a.scheduled_start AT TIME ZONE t.timezone)::date = (now() AT TIME ZONE t.timezone)::date
    ) AS today_appointments,
    sub.plan_id,
    sp.name AS plan_name,
    sub.current_period_end AS subscription_expires
FROM tenants t
LEFT JOIN LATERAL (
    SELECT s.plan_id, s.current_period_end
    FROM subscriptions s
    WHERE s.tenant_id = t.id AND s.status = 'active'
    ORDER BY s.current_period_end DESC, s.created_at DESC, s.id
    LIMIT 1
) sub ON true
LEFT JOIN subscription_plans sp ON sp.id = sub.plan_id
WHERE t.deleted_at IS NULL
"""


def upgrade() -> None:
    op.execute(UPDATE_UPDATED_AT_COLUMN)
    op.execute(SET_UPDATED_AT)
    for table in VERSIONED_TABLES:
        op.execute(
            f"CREATE TRIGGER update_{table}_updated_at BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION update_updated_at_column()"
        )
    for table in UPDATED_AT_ONLY_TABLES:
        op.execute(
            f"CREATE TRIGGER update_{table}_updated_at BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION set_updated_at()"
        )

    op.execute(AUDIT_TRIGGER_FUNCTION)
    for table in AUDITED_TABLES:
        op.execute(
            f"CREATE TRIGGER audit_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_trigger_function()"
        )

    op.execute(RESOURCE_AVAILABILITY)
    op.execute(APPOINTMENT_STATS)
    op.execute(TENANT_DASHBOARD)


def downgrade() -> None:
    op.execute("DROP VIEW tenant_dashboard")
    op.execute("DROP VIEW appointment_stats")
    op.execute("DROP VIEW resource_availability")
    for table in reversed(AUDITED_TABLES):
        op.execute(f"DROP TRIGGER audit_{table} ON {table}")
    op.execute("DROP FUNCTION audit_trigger_function()")
    for table in reversed(VERSIONED_TABLES + UPDATED_AT_ONLY_TABLES):
        op.execute(f"DROP TRIGGER update_{table}_updated_at ON {table}")
    op.execute("DROP FUNCTION set_updated_at()")
    op.execute("DROP FUNCTION update_updated_at_column()")
