"""Alembic environment: online migrations only, with timeouts so a migration never queues behind a long lock."""

from alembic import context
from sqlalchemy import create_engine, pool, text

from core.config import get_settings
from core.models import Base

config = context.config
target_metadata = Base.metadata

# Views are created by hand in revision 010; keep autogenerate/check from treating them as tables.
VIEW_NAMES = {"resource_availability", "appointment_stats", "tenant_dashboard"}


def include_object(obj, name, type_, reflected, compare_to):
    return not (type_ == "table" and name in VIEW_NAMES)


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
    connectable = config.attributes.get("connection")
    if connectable is None:
        engine = create_engine(url, poolclass=pool.NullPool)
        with engine.connect() as connection:
            _run(connection)
        engine.dispose()
    else:
        _run(connectable)


def _run(connection) -> None:
    connection.execute(text("SET lock_timeout = '5s'"))
    connection.execute(text("SET statement_timeout = '120s'"))
    # Migrations act for every tenant: a data migration run by a non-superuser owner would otherwise
    # see no tenant rows under the forced row-level security policies.
    connection.execute(text("SELECT set_config('app.system', 'on', false)"))
    # The three settings are the session's (not LOCAL): they outlive this commit. Without it the SETs above
    # leave a transaction open, Alembic finds itself "in an external transaction" and runs every revision
    # of the upgrade in that one transaction: locks taken by one revision (013's ACCESS EXCLUSIVE on every
    # table) are held until the last revision ends, a failure undoes revisions that had succeeded, and a
    # revision's SET LOCAL leaks into the next ones (docs/operations.md promises one transaction each).
    connection.commit()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    if connection.in_transaction():
        connection.commit()


run_migrations_online()
