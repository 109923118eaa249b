"""Every intake job has an `enqueued_at`: the sweeper re-sends a queued job by it.

`core.intake.submit` writes it with the job, but the column allowed NULL, and a queued job without it (a row
written by anything else: an import, a script, a later intake path that forgets it) was never re-sent: the
sweeper's `enqueued_at < now - queued_for` is never true of NULL, so the job would wait forever. Now the column
defaults to the time the row is written and refuses NULL; a row that has none takes its `created_at`, which
makes a lost queued job due for the next sweep.

Revision ID: 026
Revises: 025
"""

import sqlalchemy as sa
from alembic import op

revision = "026"
down_revision = "025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE intake_jobs SET enqueued_at = created_at WHERE enqueued_at IS NULL")
    op.alter_column("intake_jobs", "enqueued_at", server_default=sa.text("now()"), nullable=False)


def downgrade() -> None:
    op.alter_column("intake_jobs", "enqueued_at", server_default=None, nullable=True)
