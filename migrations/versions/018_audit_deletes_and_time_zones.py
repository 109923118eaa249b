"""What a review of the schema against the seed found open (docs/schema.md, "Revision 018").

- audit_trigger_function: 017's shortcut for a tenant's hard delete also skipped the DELETE of every row
  without a tenant_id (no tenant "exists" for NULL), so such deletes left no trail. It now skips only
  rows that name a tenant that is gone.
- tenants.timezone, users.timezone: any text was accepted, and one misspelt zone made the reporting
  views (tenant_dashboard, appointment_stats, which convert with AT TIME ZONE) fail for every tenant.
  A trigger now refuses a zone PostgreSQL does not know (23514, <table>_timezone_known).

Revision ID: 018
Revises: 017
"""

import importlib

from alembic import op

revision = "018"
down_revision = "017"
branch_labels = None
depends_on = None

# 017's function with its delete shortcut narrowed; 017 is frozen, so building on its text is stable.
_revision_017 = importlib.import_module("migrations.versions.017_review_hardening")
_SHORTCUT_017 = "IF TG_OP = 'DELETE' AND NOT EXISTS ("
_SHORTCUT = "IF TG_OP = 'DELETE' AND old_row ->> 'tenant_id' IS NOT NULL AND NOT EXISTS ("


def _audit_function() -> str:
    function = _revision_017._audit_function(skip_vanished_tenant=True)
    assert function.count(_SHORTCUT_017) == 1
    return function.replace(_SHORTCUT_017, _SHORTCUT)


# The exact IANA spelling (pg_timezone_names) costs ~0.1 s to look up; what the views need is a zone
# PostgreSQL can convert with, which costs nothing. The core checks the spelling Python needs
# (core.models: Tenant / User `timezone`).
KNOWN_TIME_ZONE = """
CREATE FUNCTION time_zone_known() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM now() AT TIME ZONE NEW.timezone;
    RETURN NEW;
EXCEPTION WHEN invalid_parameter_value THEN
    RAISE EXCEPTION 'time zone "%" is not known', NEW.timezone
        USING ERRCODE = 'check_violation', CONSTRAINT = TG_TABLE_NAME || '_timezone_known',
              TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
END;
$$
"""
TABLES = ("tenants", "users")


def upgrade() -> None:
    op.execute(_audit_function())
    op.execute(KNOWN_TIME_ZONE)
    for table in TABLES:
        # Rows already there are checked too: the migration stops, naming them, rather than keep them.
        op.execute(
            f"DO $$ DECLARE zone text; bad text; BEGIN"
            f" FOR zone IN SELECT DISTINCT timezone FROM {table} LOOP"
            f"  BEGIN PERFORM now() AT TIME ZONE zone;"
            f"  EXCEPTION WHEN invalid_parameter_value THEN bad := concat_ws(', ', bad, zone); END;"
            f" END LOOP;"
            f" IF bad IS NOT NULL THEN RAISE EXCEPTION '{table}: unknown time zones %; correct them first', bad;"
            f" END IF; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {table}_timezone_known BEFORE INSERT OR UPDATE OF timezone ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION time_zone_known()"
        )


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TRIGGER {table}_timezone_known ON {table}")
    op.execute("DROP FUNCTION time_zone_known()")
    op.execute(_revision_017._audit_function(skip_vanished_tenant=True))
