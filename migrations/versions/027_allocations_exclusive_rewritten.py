"""Current and future allocations written before 024 get the `exclusive` their resource's capacity gives them.

023 sets `exclusive` when an allocation is written and left existing rows as they were; 024 rewrites a
resource's allocations that have not ended when its capacity changes; 025 counts only the non-exclusive ones
of a shared resource, on the ground that 024 rewrote the others. A database that changed a capacity at 022 or
023 still holds allocations that have not ended whose flag says the opposite of the capacity: on a resource
now of capacity 1 they are outside the exclusion constraint, on a shared one outside 025's count, and either
way a booking written over them is accepted (a double booking, or more units than the capacity).

They are written again through 023's trigger, as 024 does for a capacity change: they become exclusive (or
not), the exclusion constraint (23P01), 025's count (23P01) and the units check (23514) see them, and an
upgrade whose stored allocations already conflict stops naming the resource. Allocations that have ended are
history and stay as they were written.

Revision ID: 027
Revises: 026
"""

from alembic import op

revision = "027"
down_revision = "026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE appointment_resources ar SET exclusive = ar.exclusive FROM resources r"
        " WHERE r.id = ar.resource_id AND ar.active AND ar.occupied_until > now()"
        " AND ar.exclusive IS DISTINCT FROM (COALESCE(r.capacity, 1) = 1)"
    )


def downgrade() -> None:
    pass  # the flags written are the ones 023 and 024 would have written: nothing to undo
