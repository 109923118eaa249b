"""services_available_hours_valid took `24:00NULL` for an end and refused `24:00:00`.

Revisions 019 and 020 wrote the end's pattern as `24:00(:00)?`, and SQLAlchemy read `:00` in it as a bound
parameter, which a DDL statement renders as NULL: the catalog held `24:00(NULL)?`. So `24:00:00`, a closing
time the core reads as midnight, was refused, and `24:00NULL`, which the core cannot read (a 500 on every
request for the service, what 019 was for), was accepted. The colon is escaped here (and in the model) so
that the pattern reaches PostgreSQL as written.

Revision ID: 022
Revises: 021
"""

from alembic import op

revision = "022"
down_revision = "021"
branch_labels = None
depends_on = None

CLOCK = "([01]?[0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?"


def _hours_check(end_of_day: str) -> str:
    return (
        "jsonb_typeof(available_hours) = 'object'"
        " AND (available_hours = '{}'::jsonb"
        f" OR (COALESCE(available_hours ->> 'start', '') ~ '^{CLOCK}$'"
        f" AND COALESCE(available_hours ->> 'end', '') ~ '^({CLOCK}|{end_of_day})$'))"
    )


# What 020 meant, with the colon escaped from SQLAlchemy's bound-parameter syntax.
NEW = _hours_check(r"24:00(\:00)?")
# What 020 left in the catalog, put back by the downgrade.
OLD = _hours_check("24:00(NULL)?")


def upgrade() -> None:
    # A service whose end is `24:00NULL` stops the upgrade here with the constraint's name: its hours
    # never worked (every request for it failed), and only its owner can say what they should be.
    op.drop_constraint("services_available_hours_valid", "services", type_="check")
    op.create_check_constraint("services_available_hours_valid", "services", NEW)


def downgrade() -> None:
    op.drop_constraint("services_available_hours_valid", "services", type_="check")
    # The old pattern refuses an end of 24:00:00, which this revision lets in; the core reads both as midnight.
    op.execute(
        "UPDATE services SET available_hours = jsonb_set(available_hours, '{end}', '\"24:00\"')"
        " WHERE available_hours ->> 'end' = '24:00:00'"
    )
    op.create_check_constraint("services_available_hours_valid", "services", OLD)
