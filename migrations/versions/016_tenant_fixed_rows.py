"""What revision 015 left unchecked: a notification's template, and rows that change tenant.

- notifications.template_id: the template must be the notification's tenant's own or a system template
  (tenant_id NULL). A composite key cannot say "own or system", so the trigger
  check_notifications_template does (SQLSTATE 23514, constraint name notifications_template_of_tenant).
  It reads the template under the caller's policies: in a tenant's unit of work another tenant's
  template is invisible, and an invisible template is refused like a foreign one. (Foreign-key checks
  bypass row-level security, so without this the key alone would accept it.) A missing id is refused
  the same way, before the foreign key would have.
- services, resources and notification_templates keep their tenant: the trigger keep_tenant_id refuses
  an UPDATE that changes tenant_id (23514, constraint name <table>_tenant_id_fixed). service_resources
  links a service and a resource without a tenant_id of its own, so moving either end to another tenant
  made the link cross tenants without touching it; and a template moved (or a system template given to a
  tenant) would make other tenants' notifications point at a template that is no longer theirs.
  Referenced clients, appointments and subscriptions already cannot move: the composite keys of 015
  refuse it.

Revision ID: 016
Revises: 015
"""

from alembic import op

revision = "016"
down_revision = "015"
branch_labels = None
depends_on = None

# Frozen here on purpose: the models may change later, this revision must not.
FIXED_TENANT_TABLES = ["services", "resources", "notification_templates"]

NOTIFICATION_TEMPLATE_FUNCTION = """
CREATE FUNCTION notifications_check_template() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    template_tenant uuid;
BEGIN
    SELECT t.tenant_id INTO template_tenant FROM notification_templates t WHERE t.id = NEW.template_id;
    IF NOT FOUND OR (template_tenant IS NOT NULL AND template_tenant IS DISTINCT FROM NEW.tenant_id) THEN
        RAISE EXCEPTION 'notification template % is neither a system template nor one of tenant %',
                NEW.template_id, NEW.tenant_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'notifications_template_of_tenant',
                  TABLE = 'notifications', SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    RETURN NEW;
END;
$$
"""

KEEP_TENANT_FUNCTION = """
CREATE FUNCTION keep_tenant_id() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% % cannot move from tenant % to tenant %', TG_TABLE_NAME, OLD.id, OLD.tenant_id,
            NEW.tenant_id
        USING ERRCODE = 'check_violation', CONSTRAINT = TG_TABLE_NAME || '_tenant_id_fixed',
              TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
END;
$$
"""


def upgrade() -> None:
    op.execute(NOTIFICATION_TEMPLATE_FUNCTION)
    # WHEN: most notifications carry a template, but the check costs nothing for those that do not.
    op.execute(
        "CREATE TRIGGER check_notifications_template BEFORE INSERT OR UPDATE OF template_id, tenant_id"
        " ON notifications FOR EACH ROW WHEN (NEW.template_id IS NOT NULL)"
        " EXECUTE FUNCTION notifications_check_template()"
    )
    op.execute(KEEP_TENANT_FUNCTION)
    for table in FIXED_TENANT_TABLES:
        op.execute(
            f"CREATE TRIGGER keep_{table}_tenant BEFORE UPDATE OF tenant_id ON {table} FOR EACH ROW"
            " WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id) EXECUTE FUNCTION keep_tenant_id()"
        )


def downgrade() -> None:
    for table in reversed(FIXED_TENANT_TABLES):
        op.execute(f"DROP TRIGGER keep_{table}_tenant ON {table}")
    op.execute("DROP FUNCTION keep_tenant_id()")
    op.execute("DROP TRIGGER check_notifications_template ON notifications")
    op.execute("DROP FUNCTION notifications_check_template()")
