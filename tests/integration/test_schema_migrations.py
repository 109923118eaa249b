"""The migrations run up, down and up again on a database of their own, and the models match what they build.

`alembic check` compares tables, columns, types, nullability, unique constraints, foreign keys and
index columns, but not index predicates, check constraints or exclusion constraints. So the models are
also built with `create_all` in a second scratch database and PostgreSQL's own rendering of every index
and constraint (pg_get_indexdef / pg_get_constraintdef) is compared between the two.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core.config import DEFAULT_DATABASE_URL
from core.models import Base
from ops.database import MIGRATIONS_DIR, alembic_config, create_database_if_missing, drop_database
from tests import factories

VIEWS = {"resource_availability", "appointment_stats", "tenant_dashboard"}
SEED_TABLES = {
    "users", "user_sessions", "login_attempts", "tenants", "tenant_users", "subscription_plans",
    "subscriptions", "payments", "vapi_configurations", "vapi_call_logs", "notification_templates",
    "notifications", "services", "resources", "clients", "appointments", "service_resources",
    "appointment_resources", "resource_schedules", "resource_blocks", "audit_logs", "business_metrics",
}  # fmt: skip
ADDED_TABLES = {"api_keys", "intake_jobs"}


@contextmanager
def _scratch_database(purpose: str) -> Iterator[str]:
    """A new empty database of its own (its URL), dropped afterwards whatever happens in it."""
    base = make_url(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    url = base.set(database=f"va_{purpose}_{uuid.uuid4().hex[:12]}").render_as_string(hide_password=False)
    create_database_if_missing(url)
    try:
        yield url
    finally:
        drop_database(url)


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return set(
                connection.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                ).scalars()
            )
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def cycled():
    """A fresh database taken through upgrade head -> downgrade base -> upgrade head."""
    with _scratch_database("schema_mig") as url:
        config = alembic_config(url)
        command.upgrade(config, "head")
        after_first_upgrade = _tables(url)
        command.downgrade(config, "base")
        engine = create_engine(url)
        with engine.connect() as connection:
            leftovers = {
                "tables": _tables(url) - {"alembic_version"},
                "views": set(
                    connection.execute(
                        text("SELECT viewname FROM pg_views WHERE schemaname = 'public'")
                    ).scalars()
                ),
                "functions": set(
                    connection.execute(
                        text(
                            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                            "WHERE n.nspname = 'public'"
                        )
                    ).scalars()
                ),
                "extensions": set(
                    connection.execute(
                        text("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql'")
                    ).scalars()
                ),
            }
        engine.dispose()
        command.upgrade(config, "head")
        yield {
            "url": url,
            "config": config,
            "after_first_upgrade": after_first_upgrade,
            "leftovers": leftovers,
        }


def test_upgrade_creates_every_table_and_downgrade_removes_everything(cycled):
    assert cycled["after_first_upgrade"] == SEED_TABLES | ADDED_TABLES | {"alembic_version"}
    assert cycled["leftovers"] == {"tables": set(), "views": set(), "functions": set(), "extensions": set()}
    assert _tables(cycled["url"]) == SEED_TABLES | ADDED_TABLES | {"alembic_version"}


def test_revisions_follow_the_seed_order(cycled):
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(cycled["config"])
    chain = [revision.revision for revision in reversed(list(script.walk_revisions()))]
    # 001-010 are the seed's steps, 011 the lead's additions; later revisions follow on one line.
    assert chain[:11] == [f"{number:03d}" for number in range(1, 12)]
    assert len(script.get_heads()) == 1


def test_alembic_check_finds_no_drift(cycled):
    command.check(cycled["config"])  # raises AutogenerateDiffsDetected on any difference


def test_no_drift_in_server_defaults(cycled):
    # alembic check leaves server defaults out; compare them too (PostgreSQL evaluates both sides).
    engine = create_engine(cycled["url"])
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "target_metadata": Base.metadata,
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_object": lambda obj, name, type_, reflected, compare_to: (
                        not (type_ == "table" and name in VIEWS)
                    ),
                },
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


INDEXES_SQL = """
SELECT i.relname AS name, pg_get_indexdef(i.oid) AS definition
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = 'public' AND t.relname <> 'alembic_version'
"""
CONSTRAINTS_SQL = """
SELECT c.conname AS name, t.relname || ' ' || c.contype::text || ' ' || pg_get_constraintdef(c.oid) AS definition
FROM pg_constraint c
JOIN pg_class t ON t.oid = c.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = 'public' AND t.relname <> 'alembic_version'
"""


def _definitions(url: str) -> dict[str, dict[str, str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return {
                "indexes": dict(connection.execute(text(INDEXES_SQL)).tuples().all()),
                "constraints": dict(connection.execute(text(CONSTRAINTS_SQL)).tuples().all()),
            }
    finally:
        engine.dispose()


def test_indexes_and_constraints_match_the_models_exactly(cycled):
    with _scratch_database("schema_models") as from_models:
        engine = create_engine(from_models)
        with engine.begin() as connection:
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS btree_gist"))
            Base.metadata.create_all(connection)
        engine.dispose()
        expected = _definitions(from_models)

    migrated = _definitions(cycled["url"])
    assert migrated["indexes"] == expected["indexes"]
    assert migrated["constraints"] == expected["constraints"]


def test_the_important_guards_are_in_place(cycled):
    definitions = _definitions(cycled["url"])
    constraints, indexes = definitions["constraints"], definitions["indexes"]
    assert constraints["appointment_resources_no_overlap"] == (
        "appointment_resources x EXCLUDE USING gist (resource_id WITH =, allocated_during WITH &&)"
        " WHERE ((active AND exclusive))"
    )
    assert constraints["resource_blocks_no_overlap"] == (
        "resource_blocks x EXCLUDE USING gist (resource_id WITH =, tstzrange(start_datetime, end_datetime,"
        " '[)'::text) WITH &&) WHERE ((deleted_at IS NULL))"
    )
    assert "WHERE (deleted_at IS NULL)" in indexes["clients_email_unique_per_tenant"]
    assert indexes["clients_email_unique_per_tenant"].startswith("CREATE UNIQUE INDEX")
    assert "WHERE (deleted_at IS NULL)" in indexes["services_tenant_id_slug_key"]
    # Dropped on purpose (docs/schema.md): they read the clock or UTC hours.
    assert "appointments_future_only" not in constraints
    assert "appointments_business_hours" not in constraints
    assert "idx_unique_resource_booking" not in indexes


def test_triggers_and_views_exist(cycled):
    engine = create_engine(cycled["url"])
    try:
        with engine.connect() as connection:
            triggers = set(
                connection.execute(
                    text(
                        "SELECT c.relname || '.' || t.tgname || '.' || p.proname FROM pg_trigger t "
                        "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid "
                        "WHERE NOT t.tgisinternal"
                    )
                ).scalars()
            )
            views = set(
                connection.execute(
                    text("SELECT viewname FROM pg_views WHERE schemaname = 'public'")
                ).scalars()
            )
            timestamp_columns = (
                connection.execute(
                    text(
                        "SELECT table_name || '.' || column_name FROM information_schema.columns "
                        "WHERE table_schema = 'public' AND data_type = 'timestamp without time zone'"
                    )
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()

    # Derived from the models, so a table added later with updated_at but no trigger fails here.
    tables = Base.metadata.tables.values()
    versioned = {table.name for table in tables if "updated_at" in table.c and "version" in table.c}
    updated_at_only = {table.name for table in tables if "updated_at" in table.c and "version" not in table.c}
    assert versioned == {"users", "tenants", "services", "resources", "clients", "appointments"}
    audited = {"appointments", "payments", "clients", "services", "resources", "subscriptions"}
    expected = (
        {f"{table}.update_{table}_updated_at.update_updated_at_column" for table in versioned}
        | {f"{table}.update_{table}_updated_at.set_updated_at" for table in updated_at_only}
        | {f"{table}.audit_{table}.audit_trigger_function" for table in audited}
        | {"appointment_resources.set_appointment_resources_tenant.appointment_resources_set_tenant"}
        | {"appointment_resources.set_appointment_resources_exclusive.appointment_resources_set_exclusive"}
        | {"resources.recheck_resources_allocations.resources_recheck_allocations"}
        | {
            "appointment_resources.check_appointment_resources_shared_capacity"
            ".appointment_resources_check_shared_capacity"
        }
        | {"service_resources.check_service_resources_tenant.service_resources_check_tenant"}
        | {"notifications.check_notifications_template.notifications_check_template"}
        | {"tenant_users.keep_tenant_users_user.tenant_users_keep_user"}
        | {"users.keep_users_privileges.users_keep_privileges"}
        | {f"{table}.{table}_timezone_known.time_zone_known" for table in ("tenants", "users")}
        | {
            f"{table}.keep_{table}_tenant.keep_tenant_id"
            for table in ("services", "resources", "notification_templates")
        }
    )
    assert triggers == expected
    assert views == VIEWS
    assert timestamp_columns == []


def test_each_revision_commits_on_its_own(tmp_path):
    """A failing revision leaves the database at the last revision that succeeded, as docs/operations.md
    says, and the locks of one revision are not held through the next ones."""
    with _scratch_database("schema_txn") as url:
        config = alembic_config(url)
        head = ScriptDirectory.from_config(config).get_current_head()
        (tmp_path / "failing_after_head.py").write_text(
            f'"""A revision that fails."""\n'
            "from alembic import op\n\n"
            'revision = "failing"\n'
            f'down_revision = "{head}"\n'
            "branch_labels = None\n"
            "depends_on = None\n\n\n"
            "def upgrade():\n"
            '    op.execute("SELECT 1 / 0")\n\n\n'
            "def downgrade():\n"
            "    pass\n"
        )
        config.set_main_option("path_separator", "os")
        config.set_main_option(
            "version_locations", os.pathsep.join([str(MIGRATIONS_DIR / "versions"), str(tmp_path)])
        )
        command.upgrade(config, "019")
        with pytest.raises(DBAPIError, match="division by zero"):
            command.upgrade(config, "failing")
        engine = create_engine(url)
        with engine.connect() as connection:
            at = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        engine.dispose()
        assert at == head


def test_022_goes_down_with_a_service_closing_at_24_00_00():
    # 022 lets an end of 24:00:00 in; the check 021 had refused it, so the downgrade stopped on such a row
    # (found in review).
    with _scratch_database("schema_022") as url:
        config = alembic_config(url)
        command.upgrade(config, "head")
        engine = create_engine(url)
        with Session(engine) as session:
            tenant = factories.make_tenant(session)
            service = factories.make_service(
                session, tenant, available_hours={"start": "20:00", "end": "24:00:00"}
            )
            session.commit()
            service_id = service.id
        command.downgrade(config, "021")
        with engine.connect() as connection:
            hours = connection.execute(
                text("SELECT available_hours FROM services WHERE id = :id"), {"id": service_id}
            ).scalar_one()
        engine.dispose()
        assert hours == {"start": "20:00", "end": "24:00"}
        command.upgrade(config, "head")
