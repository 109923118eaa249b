"""Tenant-consistent references: a row can only point at a parent of its own tenant.

Foreign-key checks bypass row-level security, so until now the database accepted an appointment of
tenant A pointing at a client or service of tenant B, or an allocation of A's appointment on B's
resource. The core never writes one (it reads every id through the policies first); the schema now
refuses them too.

- Where child and parent both carry tenant_id, the single-column foreign key becomes
  `(tenant_id, <column>) REFERENCES parent (tenant_id, id)`, with `UNIQUE (tenant_id, id)` on the parent.
  ON DELETE actions are kept; SET NULL names its column (`SET NULL (appointment_id)`, PostgreSQL 15),
  or it would null tenant_id too. A NULL reference is still allowed (MATCH SIMPLE).
- notifications.tenant_id is nullable, and MATCH SIMPLE checks nothing when it is NULL: the CHECK
  notifications_appointment_has_tenant makes a notification about an appointment carry a tenant.
- service_resources has no tenant_id: a trigger refuses a link between a service and a resource of
  different tenants (SQLSTATE 23514, constraint name service_resources_same_tenant).
- appointment_resources.tenant_id is written by its BEFORE INSERT trigger (013); row triggers run before
  foreign-key checks, so the composite keys see the copied value.

Revision ID: 015
Revises: 014
"""

from alembic import op

revision = "015"
down_revision = "014"
branch_labels = None
depends_on = None

# Frozen here on purpose: the models may change later, this revision must not.
PARENTS = ["clients", "services", "resources", "appointments", "subscriptions"]
# (table, column, parent, ON DELETE of the single-column key it replaces)
LINKS = [
    ("appointments", "client_id", "clients", None),
    ("appointments", "service_id", "services", None),
    ("appointment_resources", "appointment_id", "appointments", "CASCADE"),
    ("appointment_resources", "resource_id", "resources", None),
    ("vapi_call_logs", "appointment_id", "appointments", None),
    ("notifications", "appointment_id", "appointments", "SET NULL"),
    ("intake_jobs", "appointment_id", "appointments", "SET NULL"),
    ("payments", "subscription_id", "subscriptions", None),
]

# SECURITY INVOKER on purpose. The lookups run under the policies: in a tenant's unit of work another
# tenant's row reads as NULL, and then the service_resources policy (013) refuses the link anyway, because
# its WITH CHECK wants both ends to be the tenant's. In system mode and for roles that bypass row-level
# security every row is visible, so the comparison below is what refuses. A missing id is left to the
# foreign keys (23503).
SERVICE_RESOURCES_FUNCTION = """
CREATE FUNCTION service_resources_check_tenant() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    service_tenant uuid := (SELECT s.tenant_id FROM services s WHERE s.id = NEW.service_id);
    resource_tenant uuid := (SELECT r.tenant_id FROM resources r WHERE r.id = NEW.resource_id);
BEGIN
    IF service_tenant <> resource_tenant THEN
        RAISE EXCEPTION 'service % and resource % belong to different tenants', NEW.service_id, NEW.resource_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'service_resources_same_tenant',
                  TABLE = 'service_resources', SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    RETURN NEW;
END;
$$
"""


def _composite_name(table: str, column: str) -> str:
    return f"{table}_tenant_id_{column}_fkey"


def upgrade() -> None:
    # Builds five indexes and checks eight keys over whole tables: work, not lock waits, which
    # lock_timeout still bounds (env.py's 120 s statement guard is for those).
    op.execute("SET LOCAL statement_timeout = 0")
    for parent in PARENTS:
        op.create_unique_constraint(f"{parent}_tenant_id_id_key", parent, ["tenant_id", "id"])
    for table, column, parent, ondelete in LINKS:
        op.drop_constraint(f"{table}_{column}_fkey", table, type_="foreignkey")
        op.create_foreign_key(
            _composite_name(table, column),
            table,
            parent,
            ["tenant_id", column],
            ["tenant_id", "id"],
            ondelete=f"SET NULL ({column})" if ondelete == "SET NULL" else ondelete,
        )
    op.create_check_constraint(
        "notifications_appointment_has_tenant",
        "notifications",
        "appointment_id IS NULL OR tenant_id IS NOT NULL",
    )
    op.execute(SERVICE_RESOURCES_FUNCTION)
    op.execute(
        "CREATE TRIGGER check_service_resources_tenant BEFORE INSERT OR UPDATE OF service_id, resource_id"
        " ON service_resources FOR EACH ROW EXECUTE FUNCTION service_resources_check_tenant()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER check_service_resources_tenant ON service_resources")
    op.execute("DROP FUNCTION service_resources_check_tenant()")
    op.drop_constraint("notifications_appointment_has_tenant", "notifications", type_="check")
    for table, column, parent, ondelete in reversed(LINKS):
        op.drop_constraint(_composite_name(table, column), table, type_="foreignkey")
        op.create_foreign_key(f"{table}_{column}_fkey", table, parent, [column], ["id"], ondelete=ondelete)
    for parent in reversed(PARENTS):
        op.drop_constraint(f"{parent}_tenant_id_id_key", parent, type_="unique")
