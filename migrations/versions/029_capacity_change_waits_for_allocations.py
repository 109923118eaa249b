"""A capacity change waits for the allocations of its resource being written, and they for it.

024 rewrites a resource's allocations when its capacity changes, but only those committed: an allocation
written meanwhile by a booking not yet committed kept the flag 023 had set from the old capacity. A room lowered
to one place took a second group at the same hour (the new row non-exclusive, outside the exclusion
constraint), and a room raised to two kept an exclusive row outside 025's count, so two more groups fitted
beside it (found by a review of shared resources under concurrency, 2026-11-28).

Now every allocation written takes a shared advisory lock on its resource (023's trigger, before it reads the
capacity), and a capacity change takes it exclusively (024's trigger, before it rewrites): the change waits for
the allocations being written to commit, then rewrites them too, and an allocation written during the change
waits for it and reads the new capacity. Namespace 0x56410004, key the resource id (core.booking.CAPACITY_LOCKS):
the core takes it for its shared resources before their locks per day (0x56410001), the order 024 and 025 take
them in, so that a booking and a capacity change never wait for each other in a cycle.

And 025's count refuses any isolation but READ COMMITTED (40001): SERIALIZABLE does not catch a writer that is
not serializable, as the core's bookings are not; a serializable import counted with a snapshot taken before the
booking it had waited for committed, and put a fourth group in a room for three.

Revision ID: 029
Revises: 028
"""

import importlib

from alembic import op

revision = "029"
down_revision = "028"
branch_labels = None
depends_on = None

_revision_023 = importlib.import_module("migrations.versions.023_allocation_exclusive_from_capacity")
_revision_024 = importlib.import_module("migrations.versions.024_capacity_change_rechecks_allocations")
_revision_025 = importlib.import_module("migrations.versions.025_shared_capacity_checked")

CAPACITY_LOCKS = 1447100420  # 0x56410004

_READS_CAPACITY = (
    "    SELECT COALESCE(r.capacity, 1) INTO total FROM resources r WHERE r.id = NEW.resource_id;\n"
)
_REWRITES = "    UPDATE appointment_resources SET exclusive = exclusive\n"
_REPEATABLE_READ_REFUSED = """    IF current_setting('transaction_isolation') = 'repeatable read' THEN
        RAISE EXCEPTION 'allocations of shared resources are counted in READ COMMITTED or SERIALIZABLE'
              ' transactions, not REPEATABLE READ'
"""
_READ_COMMITTED_ONLY = """    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'allocations of shared resources are counted in READ COMMITTED transactions only, not %',
              upper(current_setting('transaction_isolation'))
"""


def _replacing(function: str, old: str, new: str) -> str:
    assert function.count(old) == 1, old
    return function.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1).replace(old, new)


def upgrade() -> None:
    # The statement after the lock takes a snapshot of its own (a volatile function's statements do, in READ
    # COMMITTED): it reads the capacity a change committed while this waited.
    waits_for_a_change = (
        f"    PERFORM pg_advisory_xact_lock_shared({CAPACITY_LOCKS}, hashtext(NEW.resource_id::text));\n"
    )
    op.execute(
        _replacing(
            _revision_023.EXCLUSIVE_FROM_CAPACITY, _READS_CAPACITY, waits_for_a_change + _READS_CAPACITY
        )
    )
    waits_for_the_writers = f"    PERFORM pg_advisory_xact_lock({CAPACITY_LOCKS}, hashtext(NEW.id::text));\n"
    op.execute(_replacing(_revision_024.RECHECK_ALLOCATIONS, _REWRITES, waits_for_the_writers + _REWRITES))
    op.execute(
        _replacing(_revision_025.CHECK_SHARED_CAPACITY, _REPEATABLE_READ_REFUSED, _READ_COMMITTED_ONLY)
    )


def downgrade() -> None:
    for function in (
        _revision_023.EXCLUSIVE_FROM_CAPACITY,
        _revision_024.RECHECK_ALLOCATIONS,
        _revision_025.CHECK_SHARED_CAPACITY,
    ):
        op.execute(function.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
