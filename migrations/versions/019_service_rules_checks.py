"""A service's booking rules are checked on write (docs/schema.md, "Revision 019").

The core reads `available_days`, `available_hours` and the advance limits of a service for every
availability query and booking; a value it cannot read (a day "1" as text, hours "9am", a limit of a
million days) failed every request for that service with a 500. The database now refuses them.

Revision ID: 019
Revises: 018
"""

from alembic import op

revision = "019"
down_revision = "018"
branch_labels = None
depends_on = None

CLOCK = "([01]?[0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?"
CHECKS = {
    # Days 0 (Sunday) to 6, as numbers.
    "services_available_days_valid": (
        "jsonb_typeof(available_days) = 'array' AND available_days <@ '[0, 1, 2, 3, 4, 5, 6]'::jsonb"
    ),
    # {"start": "HH:MM", "end": "HH:MM"}, seconds optional; an end of 24:00 is midnight.
    "services_available_hours_valid": (
        "jsonb_typeof(available_hours) = 'object'"
        f" AND available_hours ->> 'start' ~ '^{CLOCK}$'"
        f" AND available_hours ->> 'end' ~ '^({CLOCK}|24:00(:00)?)$'"
    ),
    # Ten years ahead at most: further is a typo, and past the dates the core can count to.
    "services_advance_booking_valid": (
        "min_advance_booking_hours BETWEEN 0 AND 87600 AND max_advance_booking_days BETWEEN 0 AND 3650"
    ),
}


def upgrade() -> None:
    for name, condition in CHECKS.items():
        op.create_check_constraint(name, "services", condition)


def downgrade() -> None:
    for name in reversed(CHECKS):
        op.drop_constraint(name, "services", type_="check")
