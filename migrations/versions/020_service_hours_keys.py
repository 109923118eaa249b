"""services_available_hours_valid (019) let through an object without `start` or `end`.

`available_hours ->> 'end'` is NULL when the key is missing, `NULL ~ pattern` is NULL, and a CHECK whose
condition is NULL passes: `{"start": "09:00"}` or `{"begin": ..., "finish": ...}` were accepted, and the core
(core/availability.py, _Planner) reads hours["start"] and hours["end"] of any non-empty object: KeyError, a
500 on every request for the service. An empty object `{}` still means "all day", as the core reads it.

Revision ID: 020
Revises: 019
"""

from alembic import op

revision = "020"
down_revision = "019"
branch_labels = None
depends_on = None

CLOCK = "([01]?[0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?"
OLD = (
    "jsonb_typeof(available_hours) = 'object'"
    f" AND available_hours ->> 'start' ~ '^{CLOCK}$'"
    f" AND available_hours ->> 'end' ~ '^({CLOCK}|24:00(:00)?)$'"
)
NEW = (
    "jsonb_typeof(available_hours) = 'object'"
    " AND (available_hours = '{}'::jsonb"
    f" OR (COALESCE(available_hours ->> 'start', '') ~ '^{CLOCK}$'"
    f" AND COALESCE(available_hours ->> 'end', '') ~ '^({CLOCK}|24:00(:00)?)$'))"
)


def upgrade() -> None:
    # A database whose services break it stops here with the constraint's name (as 019 does).
    op.drop_constraint("services_available_hours_valid", "services", type_="check")
    op.create_check_constraint("services_available_hours_valid", "services", NEW)


def downgrade() -> None:
    op.drop_constraint("services_available_hours_valid", "services", type_="check")
    op.create_check_constraint("services_available_hours_valid", "services", OLD)
