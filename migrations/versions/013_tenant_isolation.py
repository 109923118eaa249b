"""Tenant isolation: row-level security on every table, and an application role that owns nothing.

Every policy reads transaction-local settings that UnitOfWork sets (core/db.py):
- app.tenant_id: the tenant of the unit of work; a row is visible and writable when it belongs to it;
- app.system = 'on': a unit of work that legitimately spans tenants (the job runner before it has read
  the job's tenant, the sweeper, the API-key lookup, the seed). Without either, a tenant table is empty;
- app.user_id: the acting user, for users and user_sessions.
Tables without tenant_id follow their parent: service_resources (services), resource_schedules and
resource_blocks (resources). appointment_resources gets a tenant_id of its own instead, copied from its
appointment by a trigger: the availability query reads thousands of allocations per call, and a policy
that looked up each one's appointment made it about nine times slower (docs/schema.md).
Global tables: subscription_plans are readable by everyone, written in system mode; system notification
templates (tenant_id NULL) are readable by every tenant, written in system mode; users are readable by
their tenants' units of work, user_sessions by their own user, login_attempts in system mode only.

The settings are wrapped in scalar subqueries so that PostgreSQL evaluates them once per statement
(an InitPlan) rather than once per row.

The owner (the migrating user) and superusers bypass these policies: the application acts as
VOICEAPPOINT_DB_APP_ROLE (default voiceappoint_app) through `SET ROLE` on each new connection. The role
is cluster-wide and shared by every database on the server (several test runs at once), so it is
created race-safely, and the downgrade revokes this database's grants but never drops the role.

The three views run with the invoker's rights (security_invoker) so that the policies of the tables
under them apply to the application; a view owned by the owner would otherwise show every tenant.

Revision ID: 013
Revises: 012
"""

import re

import sqlalchemy as sa
from alembic import op

from core.config import get_settings

revision = "013"
down_revision = "012"
branch_labels = None
depends_on = None

TENANT = "(SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid)"
USER = "(SELECT NULLIF(current_setting('app.user_id', true), '')::uuid)"
SYSTEM = "(SELECT current_setting('app.system', true) = 'on')"

TENANT_TABLES = [
    "api_keys",
    "appointment_resources",
    "appointments",
    "audit_logs",
    "business_metrics",
    "clients",
    "intake_jobs",
    "notifications",
    "payments",
    "resources",
    "services",
    "subscriptions",
    "tenant_users",
    "vapi_call_logs",
    "vapi_configurations",
]
# table -> (its parent, the column that references the parent's id)
CHILD_TABLES = {
    "service_resources": ("services", "service_id"),
    "resource_schedules": ("resources", "resource_id"),
    "resource_blocks": ("resources", "resource_id"),
}
GLOBAL_TABLES = [
    "tenants",
    "users",
    "user_sessions",
    "login_attempts",
    "subscription_plans",
    "notification_templates",
]
ALL_TABLES = TENANT_TABLES + list(CHILD_TABLES) + GLOBAL_TABLES
VIEWS = ["resource_availability", "appointment_stats", "tenant_dashboard"]


def _tenant_row(column: str = "tenant_id") -> str:
    return f"({column} = {TENANT} OR {SYSTEM})"


def _parent_row(table: str, parent: str, column: str) -> str:
    # The parent's own policy applies inside the subquery too; spelling the tenant test out keeps the
    # rule readable here and independent of it.
    return f"EXISTS (SELECT 1 FROM {parent} p WHERE p.id = {table}.{column} AND {_tenant_row('p.tenant_id')})"


def _policies() -> dict[str, list[str]]:
    """table -> the CREATE POLICY statements that give it its rules."""
    policies: dict[str, list[str]] = {}
    for table in TENANT_TABLES:
        policies[table] = [f"CREATE POLICY tenant_isolation ON {table} USING {_tenant_row()}"]
    for table, (parent, column) in CHILD_TABLES.items():
        policies[table] = [
            f"CREATE POLICY tenant_isolation ON {table} USING ({SYSTEM} OR {_parent_row(table, parent, column)})"
        ]
    # A link between a service and a resource must not cross tenants: both ends must be ours.
    policies["service_resources"][0] += (
        f" WITH CHECK ({SYSTEM} OR ({_parent_row('service_resources', 'services', 'service_id')}"
        f" AND {_parent_row('service_resources', 'resources', 'resource_id')}))"
    )
    policies["tenants"] = [f"CREATE POLICY tenant_isolation ON tenants USING {_tenant_row('id')}"]
    # A user is seen by the units of work of the tenants they belong to, and by themselves.
    policies["users"] = [
        "CREATE POLICY tenant_members ON users FOR SELECT USING ("
        f"{SYSTEM} OR id = {USER} OR EXISTS (SELECT 1 FROM tenant_users tu"
        f" WHERE tu.user_id = users.id AND tu.tenant_id = {TENANT}))",
        f"CREATE POLICY own_row ON users FOR UPDATE USING ({SYSTEM} OR id = {USER})",
        f"CREATE POLICY system_insert ON users FOR INSERT WITH CHECK ({SYSTEM})",
        f"CREATE POLICY system_delete ON users FOR DELETE USING ({SYSTEM})",
    ]
    policies["user_sessions"] = [
        f"CREATE POLICY own_sessions ON user_sessions USING ({SYSTEM} OR user_id = {USER})"
    ]
    policies["login_attempts"] = [f"CREATE POLICY system_only ON login_attempts USING ({SYSTEM})"]
    policies["subscription_plans"] = [
        "CREATE POLICY readable ON subscription_plans FOR SELECT USING (true)",
        f"CREATE POLICY system_insert ON subscription_plans FOR INSERT WITH CHECK ({SYSTEM})",
        f"CREATE POLICY system_update ON subscription_plans FOR UPDATE USING ({SYSTEM})",
        f"CREATE POLICY system_delete ON subscription_plans FOR DELETE USING ({SYSTEM})",
    ]
    # System templates (tenant_id NULL) are every tenant's to read, nobody's but the system's to change.
    policies["notification_templates"] = [
        "CREATE POLICY readable ON notification_templates FOR SELECT"
        f" USING (tenant_id IS NULL OR {_tenant_row()})",
        f"CREATE POLICY own_insert ON notification_templates FOR INSERT WITH CHECK {_tenant_row()}",
        f"CREATE POLICY own_update ON notification_templates FOR UPDATE USING {_tenant_row()}",
        f"CREATE POLICY own_delete ON notification_templates FOR DELETE USING {_tenant_row()}",
    ]
    assert set(policies) == set(ALL_TABLES)
    return policies


def _app_role() -> str:
    role = get_settings().db_app_role
    if role and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
        raise ValueError(f"VOICEAPPOINT_DB_APP_ROLE must be a plain lower-case identifier, got {role!r}")
    return role


# Two databases migrating at once may both find the role missing: the loser of the race gets
# duplicate_object, or unique_violation on pg_authid's index, and simply uses the winner's role.
# The migrating user must be able to `SET ROLE` to it (a superuser always can).
CREATE_ROLE = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
        BEGIN
            CREATE ROLE {role} NOLOGIN NOSUPERUSER NOBYPASSRLS;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}' AND (rolsuper OR rolbypassrls)) THEN
        RAISE EXCEPTION 'role {role} is a superuser or bypasses RLS: it cannot be the application role';
    END IF;
    IF NOT pg_has_role(current_user, '{role}', 'MEMBER') THEN
        EXECUTE format('GRANT {role} TO %I', current_user);
    END IF;
END
$$
"""

# Always the appointment's tenant, whoever inserts (the core, factories, seeds): callers need not
# know the column exists. An appointment the unit of work cannot see gives NULL, which the policy
# refuses (and NOT NULL, in system mode, where only a missing appointment gives NULL).
ALLOCATION_TENANT_FUNCTION = """
CREATE FUNCTION appointment_resources_set_tenant() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.tenant_id := (SELECT a.tenant_id FROM appointments a WHERE a.id = NEW.appointment_id);
    RETURN NEW;
END;
$$
"""

SEQUENCE_PRIVILEGES = "USAGE, SELECT, UPDATE"
TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"


def upgrade() -> None:
    op.add_column("appointment_resources", sa.Column("tenant_id", sa.Uuid(), nullable=True))
    # One pass over every allocation: on a big table it outlasts env.py's 120 s guard, which is there
    # for lock waits, not for work (lock_timeout still applies).
    op.execute("SET LOCAL statement_timeout = 0")
    op.execute(
        "UPDATE appointment_resources ar SET tenant_id = a.tenant_id FROM appointments a"
        " WHERE a.id = ar.appointment_id"
    )
    op.alter_column("appointment_resources", "tenant_id", nullable=False)
    op.execute(ALLOCATION_TENANT_FUNCTION)
    op.execute(
        "CREATE TRIGGER set_appointment_resources_tenant BEFORE INSERT OR UPDATE OF appointment_id"
        " ON appointment_resources FOR EACH ROW EXECUTE FUNCTION appointment_resources_set_tenant()"
    )

    for table, statements in _policies().items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        # FORCE: the policies hold for the owner too, unless it is a superuser (those always bypass).
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        for statement in statements:
            op.execute(statement)
    for view in VIEWS:
        op.execute(f"ALTER VIEW {view} SET (security_invoker = true)")

    role = _app_role()
    if not role:
        return
    op.execute(CREATE_ROLE.format(role=role))
    op.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    op.execute(f"GRANT {TABLE_PRIVILEGES} ON ALL TABLES IN SCHEMA public TO {role}")
    op.execute(f"GRANT {SEQUENCE_PRIVILEGES} ON ALL SEQUENCES IN SCHEMA public TO {role}")
    # The audit trail is append-only for the application; the trigger writes it as the owner.
    op.execute(f"REVOKE UPDATE, DELETE ON audit_logs FROM {role}")
    # The migration history is the owner's business.
    op.execute(f"REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {role}")
    # Tables of later revisions are the application's too, without each revision remembering to grant.
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT {TABLE_PRIVILEGES} ON TABLES TO {role}")
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT {SEQUENCE_PRIVILEGES} ON SEQUENCES TO {role}"
    )


def downgrade() -> None:
    role = _app_role()
    if role:
        # Only if it exists: a database upgraded with the setting empty never granted anything.
        op.execute(
            f"""
            DO $$
            BEGIN
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                    ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM {role};
                    ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM {role};
                    REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role};
                    REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role};
                    REVOKE USAGE ON SCHEMA public FROM {role};
                END IF;
            END
            $$
            """
        )
        # The role itself stays: it is cluster-wide and other databases on this server use it.
    for view in VIEWS:
        op.execute(f"ALTER VIEW {view} RESET (security_invoker)")
    for table, statements in _policies().items():
        for statement in statements:
            name = statement.split()[2]
            op.execute(f"DROP POLICY {name} ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute("DROP TRIGGER set_appointment_resources_tenant ON appointment_resources")
    op.execute("DROP FUNCTION appointment_resources_set_tenant()")
    op.drop_column("appointment_resources", "tenant_id")
