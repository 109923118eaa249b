"""A shared resource never holds more units at once than its capacity, whoever writes the allocations.

Resources of capacity 1 are guarded by the exclusion constraint (009, 023). A shared resource (a room of four)
was guarded only by the core, which counts the units in use under an advisory lock per resource and UTC day
before it inserts (`core.booking._lock_shared_resources`): any other writer (an import, a script, the admin
endpoints to come) could put a fifth group in the room, and a capacity lowered below what overlapping
allocations hold was refused only where one allocation alone held more (024 goes through 023's units check).

Now a trigger checks, after an active shared allocation is written, that at no instant of its interval the
resource's active allocations hold more units than its capacity (the same rule as the core's count:
`core.availability`'s step function), and refuses the row otherwise (23P01, the exclusion constraint's
SQLSTATE, `appointment_resources_within_shared_capacity`): the core already treats 23P01 as "taken
meanwhile, look again". The check first takes the core's own advisory locks, so two writers that could
overlap count one after the other, and the second sees what the first committed. A capacity change rewrites
the allocations that have not ended (024), so it is checked too.

Existing rows are left as they are: a check that only history could fail is not an upgrade's business.

Revision ID: 025
Revises: 024
"""

from alembic import op

revision = "025"
down_revision = "024"
branch_labels = None
depends_on = None

# The key space and keys of core.booking.SHARED_RESOURCE_LOCKS and resource_day_keys: "<resource id>:<UTC
# date>" for every UTC day the interval touches. A migration is frozen, so the number is written out here.
CHECK_SHARED_CAPACITY = """
CREATE FUNCTION appointment_resources_check_shared_capacity() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    total integer;
    peak integer;
BEGIN
    PERFORM pg_advisory_xact_lock(1447100417, hashtext(NEW.resource_id::text || ':' || to_char(day, 'YYYY-MM-DD')))
    FROM generate_series(
        date_trunc('day', lower(NEW.allocated_during) AT TIME ZONE 'UTC'),
        date_trunc('day', (upper(NEW.allocated_during) - interval '1 microsecond') AT TIME ZONE 'UTC'),
        interval '1 day'
    ) AS day;
    SELECT COALESCE(r.capacity, 1) INTO total FROM resources r WHERE r.id = NEW.resource_id;
    -- The units in use change only where an allocation begins, so the peak over the new interval is at its
    -- start or at the start of an overlapping allocation inside it.
    SELECT max(in_use.units) INTO peak
    FROM (
        SELECT lower(NEW.allocated_during) AS at
        UNION
        SELECT other.allocated_start FROM appointment_resources other
        WHERE other.resource_id = NEW.resource_id AND other.active
          AND other.occupied_until > lower(NEW.allocated_during)
          AND other.allocated_start < upper(NEW.allocated_during)
          AND other.allocated_start > lower(NEW.allocated_during)
    ) AS instant
    CROSS JOIN LATERAL (
        SELECT sum(other.units) AS units FROM appointment_resources other
        WHERE other.resource_id = NEW.resource_id AND other.active
          AND other.occupied_until > instant.at AND other.allocated_start <= instant.at
    ) AS in_use;
    IF peak > total THEN
        RAISE EXCEPTION 'resource % would hold % units at once, and has %', NEW.resource_id, peak, total
            USING ERRCODE = 'exclusion_violation', CONSTRAINT = 'appointment_resources_within_shared_capacity',
                  TABLE = 'appointment_resources', SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    RETURN NULL;
END;
$$
"""


def upgrade() -> None:
    op.execute(CHECK_SHARED_CAPACITY)
    op.execute(
        "CREATE TRIGGER check_appointment_resources_shared_capacity"
        " AFTER INSERT OR UPDATE OF resource_id, units, exclusive, active, allocated_during"
        " ON appointment_resources FOR EACH ROW WHEN (NEW.active AND NOT NEW.exclusive)"
        " EXECUTE FUNCTION appointment_resources_check_shared_capacity()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER check_appointment_resources_shared_capacity ON appointment_resources")
    op.execute("DROP FUNCTION appointment_resources_check_shared_capacity()")
