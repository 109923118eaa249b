"""An allocation's `exclusive` comes from its resource's capacity, and its units may not exceed it.

The exclusion constraint that refuses double bookings (009) covers `active AND exclusive` rows, and
`exclusive` was whatever the writer put there: the core set it from the capacity it had read, but any
other writer (an import, a script, a future admin endpoint) could leave a capacity-1 resource open to
overlapping bookings by writing `exclusive = false`, or allocate more units than the resource has.
DESIGN §5 makes the database the last word, so a trigger now sets `exclusive` from `resources.capacity`
(NULL is 1) whenever an allocation is written or moved to another resource, and refuses more units than
the capacity (23514, appointment_resources_units_within_capacity).

Existing rows are left as they are: setting `exclusive` on them could only fail the upgrade where a
capacity was lowered after its resource had overlapping bookings, which is history, not an error.

Revision ID: 023
Revises: 022
"""

from alembic import op

revision = "023"
down_revision = "022"
branch_labels = None
depends_on = None

EXCLUSIVE_FROM_CAPACITY = """
CREATE FUNCTION appointment_resources_set_exclusive() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    total integer;
BEGIN
    SELECT COALESCE(r.capacity, 1) INTO total FROM resources r WHERE r.id = NEW.resource_id;
    IF NOT FOUND THEN
        RETURN NEW;  -- the foreign key refuses the row
    END IF;
    IF NEW.units > total THEN
        RAISE EXCEPTION 'an allocation of % units of resource %, which has %', NEW.units, NEW.resource_id, total
            USING ERRCODE = 'check_violation', CONSTRAINT = 'appointment_resources_units_within_capacity',
                  TABLE = 'appointment_resources', SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    NEW.exclusive := total = 1;
    RETURN NEW;
END;
$$
"""


def upgrade() -> None:
    op.execute(EXCLUSIVE_FROM_CAPACITY)
    op.execute(
        "CREATE TRIGGER set_appointment_resources_exclusive"
        " BEFORE INSERT OR UPDATE OF resource_id, units, exclusive ON appointment_resources"
        " FOR EACH ROW EXECUTE FUNCTION appointment_resources_set_exclusive()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER set_appointment_resources_exclusive ON appointment_resources")
    op.execute("DROP FUNCTION appointment_resources_set_exclusive()")
