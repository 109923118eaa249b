"""What a review of the policies and triggers found open (docs/schema.md, "Revision 017").

- tenant_users: a tenant could enrol any user in itself, and membership is what makes a user's row
  (password hash included) readable to the tenant. Memberships are now created only in system mode, and
  an update may not hand a membership to another user (23514, tenant_users_user_id_fixed). A removed
  membership (deleted_at set) no longer shows the user.
- users: a user may update their own row, but not the flags that grant or verify anything (is_staff,
  is_superuser, is_active, email_verified): those change in system mode only (23514,
  users_privileges_fixed).
- tenants: creating one needs system mode, as docs/schema.md always said; the single USING policy let
  any unit of work create the tenant of its context.
- audit_logs: the application role loses INSERT. The trail is written by audit_trigger_function, which
  runs as the owner (SECURITY DEFINER); with INSERT a unit of work could forge entries.
- audit_trigger_function: the rows a tenant's hard delete cascades to are not audited. Their audit rows
  would name the tenant being deleted, and the foreign key to tenants refused them, so no tenant could
  ever be deleted.

Revision ID: 017
Revises: 016
"""

import importlib
import re

from alembic import op

from core.config import get_settings

revision = "017"
down_revision = "016"
branch_labels = None
depends_on = None

# Frozen here on purpose (as in 013): later revisions must not change what this one does.
TENANT = "(SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid)"
USER = "(SELECT NULLIF(current_setting('app.user_id', true), '')::uuid)"
SYSTEM = "(SELECT current_setting('app.system', true) = 'on')"


def _own(column: str) -> str:
    return f"({column} = {TENANT} OR {SYSTEM})"


POLICIES = {
    "tenant_users": [
        f"CREATE POLICY tenant_read ON tenant_users FOR SELECT USING {_own('tenant_id')}",
        f"CREATE POLICY system_insert ON tenant_users FOR INSERT WITH CHECK ({SYSTEM})",
        f"CREATE POLICY tenant_update ON tenant_users FOR UPDATE USING {_own('tenant_id')}"
        f" WITH CHECK {_own('tenant_id')}",
        f"CREATE POLICY tenant_delete ON tenant_users FOR DELETE USING {_own('tenant_id')}",
    ],
    "tenants": [
        f"CREATE POLICY tenant_read ON tenants FOR SELECT USING {_own('id')}",
        f"CREATE POLICY system_insert ON tenants FOR INSERT WITH CHECK ({SYSTEM})",
        f"CREATE POLICY tenant_update ON tenants FOR UPDATE USING {_own('id')} WITH CHECK {_own('id')}",
        f"CREATE POLICY tenant_delete ON tenants FOR DELETE USING {_own('id')}",
    ],
}
# What 013 had, put back by the downgrade.
OLD_POLICIES = {
    "tenant_users": [f"CREATE POLICY tenant_isolation ON tenant_users USING {_own('tenant_id')}"],
    "tenants": [f"CREATE POLICY tenant_isolation ON tenants USING {_own('id')}"],
}


def _members_policy(only_current: bool) -> str:
    current = " AND tu.deleted_at IS NULL" if only_current else ""
    return (
        "CREATE POLICY tenant_members ON users FOR SELECT USING ("
        f"{SYSTEM} OR id = {USER} OR EXISTS (SELECT 1 FROM tenant_users tu"
        f" WHERE tu.user_id = users.id AND tu.tenant_id = {TENANT}{current}))"
    )


KEEP_MEMBERSHIP_USER = """
CREATE FUNCTION tenant_users_keep_user() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('app.system', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'the membership % cannot be handed to another user', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'tenant_users_user_id_fixed',
                  TABLE = 'tenant_users', SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    RETURN NEW;
END;
$$
"""


PRIVILEGE_COLUMNS = "is_staff, is_superuser, is_active, email_verified"

KEEP_USER_PRIVILEGES = """
CREATE FUNCTION users_keep_privileges() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('app.system', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'user %: is_staff, is_superuser, is_active and email_verified change in system mode only',
                OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'users_privileges_fixed',
                  TABLE = 'users', SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    RETURN NEW;
END;
$$
"""


# 010's function (frozen there, as this one is here), with one early return in this revision.
_revision_010 = importlib.import_module("migrations.versions.010_create_views_and_functions")
_VANISHED_TENANT = """
    -- A hard delete of a tenant cascades here: its trail goes with it (the key to tenants would refuse
    -- a row naming it). Only deletes look: the check costs nothing on the booking path.
    IF TG_OP = 'DELETE' AND NOT EXISTS (
        SELECT 1 FROM tenants t WHERE t.id = (old_row ->> 'tenant_id')::uuid
    ) THEN
        RETURN NULL;
    END IF;"""


def _audit_function(skip_vanished_tenant: bool) -> str:
    function = _revision_010.AUDIT_TRIGGER_FUNCTION.replace(
        "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1
    )
    assert function.count("\nBEGIN\n") == 1
    return function.replace("\nBEGIN\n", f"\nBEGIN{_VANISHED_TENANT}\n") if skip_vanished_tenant else function


def _app_role() -> str:
    role = get_settings().db_app_role
    if role and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
        raise ValueError(f"VOICEAPPOINT_DB_APP_ROLE must be a plain lower-case identifier, got {role!r}")
    return role


def _replace_policies(old: dict[str, list[str]], new: dict[str, list[str]]) -> None:
    for table, statements in old.items():
        for statement in statements:
            op.execute(f"DROP POLICY {statement.split()[2]} ON {table}")
        for statement in new[table]:
            op.execute(statement)


def upgrade() -> None:
    _replace_policies(OLD_POLICIES, POLICIES)
    op.execute("DROP POLICY tenant_members ON users")
    op.execute(_members_policy(only_current=True))
    op.execute(KEEP_MEMBERSHIP_USER)
    op.execute(
        "CREATE TRIGGER keep_tenant_users_user BEFORE UPDATE OF user_id ON tenant_users FOR EACH ROW"
        " WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id) EXECUTE FUNCTION tenant_users_keep_user()"
    )
    op.execute(KEEP_USER_PRIVILEGES)
    op.execute(
        f"CREATE TRIGGER keep_users_privileges BEFORE UPDATE OF {PRIVILEGE_COLUMNS} ON users FOR EACH ROW"
        " WHEN (OLD.is_staff IS DISTINCT FROM NEW.is_staff OR OLD.is_superuser IS DISTINCT FROM NEW.is_superuser"
        " OR OLD.is_active IS DISTINCT FROM NEW.is_active OR OLD.email_verified IS DISTINCT FROM NEW.email_verified)"
        " EXECUTE FUNCTION users_keep_privileges()"
    )
    op.execute(_audit_function(skip_vanished_tenant=True))
    role = _app_role()
    if role:
        op.execute(f"REVOKE INSERT ON audit_logs FROM {role}")


def downgrade() -> None:
    role = _app_role()
    if role:
        op.execute(
            f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN"
            f" GRANT INSERT ON audit_logs TO {role}; END IF; END $$"
        )
    op.execute(_audit_function(skip_vanished_tenant=False))
    op.execute("DROP TRIGGER keep_users_privileges ON users")
    op.execute("DROP FUNCTION users_keep_privileges()")
    op.execute("DROP TRIGGER keep_tenant_users_user ON tenant_users")
    op.execute("DROP FUNCTION tenant_users_keep_user()")
    op.execute("DROP POLICY tenant_members ON users")
    op.execute(_members_policy(only_current=False))
    _replace_policies(POLICIES, OLD_POLICIES)
