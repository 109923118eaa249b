"""A resource's capacity changed: its current and future allocations are written again by 023's trigger.

023 sets an allocation's `exclusive` from its resource's capacity when the allocation is written, and
nothing rewrote it when the capacity changed afterwards: allocations made while a room had capacity 2 stayed
non-exclusive once it had capacity 1, and the exclusion constraint, which covers exclusive rows only, then let
a new booking overlap them. Now a change of capacity rewrites the resource's active allocations that have not
ended, through the same trigger: they become exclusive (or not), and a capacity below what they hold is
refused, as the exclusion constraint (23P01) or the units check (23514) refuses it. Allocations that have
ended are history and stay as they were written.

Revision ID: 024
Revises: 023
"""

from alembic import op

revision = "024"
down_revision = "023"
branch_labels = None
depends_on = None

RECHECK_ALLOCATIONS = """
CREATE FUNCTION resources_recheck_allocations() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE appointment_resources SET exclusive = exclusive
    WHERE resource_id = NEW.id AND active AND occupied_until > now();
    RETURN NULL;
END;
$$
"""


def upgrade() -> None:
    op.execute(RECHECK_ALLOCATIONS)
    op.execute(
        "CREATE TRIGGER recheck_resources_allocations AFTER UPDATE OF capacity ON resources FOR EACH ROW"
        " WHEN (COALESCE(OLD.capacity, 1) IS DISTINCT FROM COALESCE(NEW.capacity, 1))"
        " EXECUTE FUNCTION resources_recheck_allocations()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER recheck_resources_allocations ON resources")
    op.execute("DROP FUNCTION resources_recheck_allocations()")
