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

The count reads the resource's shared (non-exclusive) active allocations that overlap the new one, through a
GiST index on (resource_id, allocated_start, occupied_until) of those rows only: a room's count costs the few
allocations it overlaps, not every future one (a capacity change rewrites all of them, 024), and a capacity-1
row's insert, the common case, pays nothing for the index. Exclusive rows of a resource that is shared now are
from before its capacity was raised and have ended (024 rewrote the others): history, not counted.

A transaction in REPEATABLE READ is refused (40001) when it writes a shared allocation: after waiting for the
lock it would count with a snapshot taken before the other writer committed, and let both in. READ COMMITTED
(the application's) counts with a fresh snapshot; SERIALIZABLE fails one of two such writers by itself.

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
    -- The count below must see what the previous holder of the lock committed. READ COMMITTED takes a new
    -- snapshot for it; SERIALIZABLE fails one of two overlapping writers (40001); REPEATABLE READ would count
    -- with a snapshot taken before the wait and let both in.
    IF current_setting('transaction_isolation') = 'repeatable read' THEN
        RAISE EXCEPTION 'allocations of shared resources are counted in READ COMMITTED or SERIALIZABLE'
              ' transactions, not REPEATABLE READ'
            USING ERRCODE = 'serialization_failure', TABLE = 'appointment_resources', SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    PERFORM pg_advisory_xact_lock(1447100417, hashtext(NEW.resource_id::text || ':' || to_char(day, 'YYYY-MM-DD')))
    FROM generate_series(
        date_trunc('day', lower(NEW.allocated_during) AT TIME ZONE 'UTC'),
        date_trunc('day', (upper(NEW.allocated_during) - interval '1 microsecond') AT TIME ZONE 'UTC'),
        interval '1 day'
    ) AS day;
    SELECT COALESCE(r.capacity, 1) INTO total FROM resources r WHERE r.id = NEW.resource_id;
    -- One pass over the shared allocations that overlap the new one (the GiST index below finds them by both
    -- bounds, leakproof comparisons that row-level security lets into the index scan): each adds its units
    -- where it begins (at the new interval's start at the earliest) and takes them back where it ends; at
    -- equal instants ends come first (half-open intervals), and the running total's maximum is the peak.
    SELECT max(running) INTO peak
    FROM (
        SELECT sum(event.delta) OVER (ORDER BY event.at, event.delta ROWS UNBOUNDED PRECEDING) AS running
        FROM appointment_resources other
        CROSS JOIN LATERAL (
            VALUES (greatest(other.allocated_start, lower(NEW.allocated_during)), other.units),
                   (other.occupied_until, -other.units)
        ) AS event (at, delta)
        WHERE other.resource_id = NEW.resource_id AND other.active AND NOT other.exclusive
          AND other.allocated_start < upper(NEW.allocated_during)
          AND other.occupied_until > lower(NEW.allocated_during)
    ) AS sweep;
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
    op.execute(
        "CREATE INDEX idx_appointment_resources_overlap ON appointment_resources"
        " USING gist (resource_id, allocated_start, occupied_until) WHERE (active AND NOT exclusive)"
    )
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
    op.execute("DROP INDEX idx_appointment_resources_overlap")
