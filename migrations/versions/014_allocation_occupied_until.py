"""appointment_resources.occupied_until: the end of an allocation's occupied interval, indexed.

Under row-level security the range operator && (not leakproof) cannot drive an index scan, so the
availability query could bound its scan of a resource's allocations only by their start: it read the
resource's whole history. `occupied_until > window start` is a plain timestamp comparison (leakproof):
with a btree on (resource_id, occupied_until) the scan reads only allocations still running at or after
the window, i.e. it is bounded by how far ahead people book, not by how long the business has existed.

Revision ID: 014
Revises: 013
"""

import sqlalchemy as sa
from alembic import op

revision = "014"
down_revision = "013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A stored generated column rewrites the whole table (and rebuilds its indexes) in one statement:
    # work, not a lock wait, as in 013 and 015 (lock_timeout still applies). Under env.py's 120 s guard a
    # table of ~1.5 million allocations fails here with "canceling statement due to statement timeout".
    op.execute("SET LOCAL statement_timeout = 0")
    op.add_column(
        "appointment_resources",
        sa.Column(
            "occupied_until",
            sa.DateTime(timezone=True),
            sa.Computed("upper(allocated_during)", persisted=True),
            # Never NULL in practice: appointment_resources_during_valid forbids an unbounded range, and
            # leaving it nullable lets that CHECK be the one that says so.
            nullable=True,
        ),
    )
    op.create_index(
        "idx_appointment_resources_occupied_until",
        "appointment_resources",
        ["resource_id", "occupied_until"],
        postgresql_where=sa.text("active"),
    )


def downgrade() -> None:
    op.drop_index("idx_appointment_resources_occupied_until", table_name="appointment_resources")
    op.drop_column("appointment_resources", "occupied_until")
