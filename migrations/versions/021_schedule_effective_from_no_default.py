"""resource_schedules.effective_from loses its CURRENT_DATE default.

The application's sessions run in UTC, so the default was the UTC date, not the tenant's: a schedule
inserted without a date on a New York evening (already tomorrow in UTC) came into effect only the next day,
and today's slots disappeared. NULL already means "in effect since always", which is what a schedule
written without a date is meant to be; a schedule that starts later names its date.

Revision ID: 021
Revises: 020
"""

import sqlalchemy as sa
from alembic import op

revision = "021"
down_revision = "020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("resource_schedules", "effective_from", server_default=None)


def downgrade() -> None:
    op.alter_column("resource_schedules", "effective_from", server_default=sa.text("CURRENT_DATE"))
