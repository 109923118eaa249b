"""Notification templates get a locale: one template per type, channel and language.

The seed's templates have no language, but the product speaks Spanish and English (at least): a
client is written to in their preferred language, falling back to English.

Revision ID: 012
Revises: 011
"""

import sqlalchemy as sa
from alembic import op

revision = "012"
down_revision = "011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "notification_templates", sa.Column("locale", sa.String(10), server_default="es", nullable=False)
    )
    # One active template per (type, channel, locale): system ones, and each tenant's own.
    op.create_index(
        "notification_templates_system_key",
        "notification_templates",
        ["type", "channel", "locale"],
        unique=True,
        postgresql_where=sa.text("tenant_id IS NULL"),
    )
    op.create_index(
        "notification_templates_tenant_key",
        "notification_templates",
        ["tenant_id", "type", "channel", "locale"],
        unique=True,
        postgresql_where=sa.text("tenant_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("notification_templates_tenant_key", table_name="notification_templates")
    op.drop_index("notification_templates_system_key", table_name="notification_templates")
    op.drop_column("notification_templates", "locale")
