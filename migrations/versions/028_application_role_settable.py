"""The migrating user may `SET ROLE` to the application role on PostgreSQL 16 and later too.

Revision 013 grants the application role to the migrating user unless it is already a member. From PostgreSQL
16 on, a user with CREATEROLE that creates a role (the tables' owner on a managed database, which is no
superuser) is made a member of it WITH ADMIN OPTION but without SET: a member, so 013 granted nothing, and one
that may not `SET ROLE` to it. The support SQL of docs/operations.md (section 5), run as the migrating user,
then failed with "permission denied to set role". Such a member may grant itself the SET option, which this
revision does. Before PostgreSQL 16 every member may `SET ROLE`: nothing to do.

Revision ID: 028
Revises: 027
"""

import importlib

from alembic import op

revision = "028"
down_revision = "027"
branch_labels = None
depends_on = None

_revision_013 = importlib.import_module("migrations.versions.013_tenant_isolation")

# pg_has_role's 'SET' and GRANT's WITH SET are PostgreSQL 16's: both stay unparsed on older servers.
GRANT_SET = """
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 160000 THEN
        IF NOT pg_has_role(current_user, '{role}', 'SET') THEN
            EXECUTE format('GRANT {role} TO %I WITH SET TRUE', current_user);
        END IF;
    END IF;
END
$$
"""


def upgrade() -> None:
    role = _revision_013._app_role()
    if role:
        op.execute(GRANT_SET.format(role=role))


def downgrade() -> None:
    pass  # the option completes what 013 granted; 013's own downgrade is what removes the role
