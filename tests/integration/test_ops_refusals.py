"""The `voiceappoint` command as an operator on a fresh machine uses it: bad input is one line and exit
status 2, and nothing is left half done; a setting that would break every request stops the process at start."""

from __future__ import annotations

import socket
import subprocess

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from core.clock import utcnow
from core.config import Settings
from core.models import ApiKey
from ops.database import drop_database
from tests.commands import run_voiceappoint as voiceappoint
from tests.factories import make_tenant

# A host that never resolves: a command that gets as far as the database fails with "cannot resolve host".
NOWHERE = "postgresql+psycopg://postgres@db.invalid:5432/voiceappoint"


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voiceappoint: error:"), result.stderr[-2000:]
    assert expected in lines[0], lines[0]


@pytest.fixture
def scratch_database(database_url):
    """A database of this test's own, migrated by the command; dropped afterwards."""
    url = make_url(database_url)
    scratch = url.set(database=f"{url.database}_ops").render_as_string(hide_password=False)
    try:
        migrated = voiceappoint("migrate", DATABASE_URL=scratch)
        assert migrated.returncode == 0, migrated.stderr
        yield scratch
    finally:
        drop_database(scratch)


def _sql(database_url: str, statement: str):
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement))
            return result.all() if result.returns_rows else None
    finally:
        engine.dispose()


def test_migrate_on_a_database_migrated_by_newer_code_is_one_line(scratch_database):
    [(head,)] = _sql(scratch_database, "SELECT version_num FROM alembic_version")
    # Newer code ran its revision 999 here (a rollback of a deploy, a second checkout on an older branch).
    _sql(scratch_database, "UPDATE alembic_version SET version_num = '999'")

    assert_one_line_error(
        voiceappoint("migrate", DATABASE_URL=scratch_database), "Can't locate revision identified by '999'"
    )
    _sql(scratch_database, f"UPDATE alembic_version SET version_num = '{head}'")
    assert_one_line_error(
        voiceappoint("migrate", "--downgrade", "0x9", DATABASE_URL=scratch_database),
        "cannot migrate database",
    )
    assert _sql(scratch_database, "SELECT version_num FROM alembic_version") == [(head,)]


def test_no_key_is_made_for_a_deleted_tenant(database_url, committed_engine):
    with Session(committed_engine, expire_on_commit=False) as session:
        tenant = make_tenant(session, deleted_at=utcnow())
        session.commit()

    result = voiceappoint("apikey", "create", "--tenant", tenant.slug, DATABASE_URL=database_url)

    # Before: exit 0 and a key printed that every request answered 401 invalid_api_key (core.auth refuses
    # the keys of a deleted tenant).
    assert_one_line_error(result, f"the tenant '{tenant.slug}' was deleted")
    assert result.stdout == ""
    with Session(committed_engine) as session:
        assert session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id)).all() == []


def test_a_key_for_a_suspended_tenant_comes_with_a_warning(database_url, committed_engine):
    with Session(committed_engine, expire_on_commit=False) as session:
        tenant = make_tenant(session, subscription_status="suspended")
        session.commit()

    result = voiceappoint("apikey", "create", "--tenant", tenant.slug, DATABASE_URL=database_url)

    # Made (the business may be reactivated), but the operator learns that it gets 403 meanwhile.
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("va_live_")
    assert "suspended" in result.stderr and "403 tenant_inactive" in result.stderr


def test_seed_demo_brings_back_a_deleted_demo_tenant(scratch_database):
    assert voiceappoint("seed", "--demo", DATABASE_URL=scratch_database).returncode == 0
    _sql(scratch_database, "UPDATE tenants SET deleted_at = now() WHERE slug = 'bella-hair-salon'")

    seeded = voiceappoint("seed", "--demo", DATABASE_URL=scratch_database)

    # Before: "0 updated, 37 unchanged", the demo stayed deleted, and `up` printed a new key at every start
    # that only ever got 401.
    assert seeded.returncode == 0, seeded.stderr
    assert _sql(scratch_database, "SELECT deleted_at FROM tenants WHERE slug = 'bella-hair-salon'") == [
        (None,)
    ]


def test_a_name_too_long_is_not_blamed_on_the_migrations(database_url, committed_engine):
    with Session(committed_engine, expire_on_commit=False) as session:
        tenant = make_tenant(session)
        session.commit()

    result = voiceappoint(
        "apikey", "create", "--tenant", tenant.slug, "--name", "x" * 300, DATABASE_URL=database_url
    )

    assert_one_line_error(result, "value too long")
    assert "migrate" not in result.stderr


def test_up_refuses_one_port_for_the_api_and_flower(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])

    result = voiceappoint(
        "up", "--port", port, "--flower-port", port, DATABASE_URL=NOWHERE, VOICEAPPOINT_DATA_DIR=str(tmp_path)
    )

    # Before: both checks passed, everything started, Flower took the port, the banner said "running" with
    # Flower's address as the API's, and then the API died on the taken port (exit 1).
    assert_one_line_error(result, "--port and --flower-port are both")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        # Before: taken for development: the public secret key and admin/admin were accepted, and a superuser
        # login too, without a word.
        ("VOICEAPPOINT_ENV", "Production"),
        ("VOICEAPPOINT_ENV", "prod"),
        # Before: migrate and seed ran, then the API, worker and Beat each refused it and `up` exited 1.
        ("VOICEAPPOINT_LOG_LEVEL", "verbose"),
        # Before: each started, and then every request failed.
        ("VOICEAPPOINT_DEFAULT_SLOT_STEP_MINUTES", "0"),  # availability 500 internal_error
        ("VOICEAPPOINT_MAX_AVAILABILITY_DAYS", "0"),  # availability 422 range_too_long
        ("VOICEAPPOINT_API_MAX_QUEUED_REQUESTS", "0"),  # every request 503 overloaded
        ("VOICEAPPOINT_DB_STATEMENT_TIMEOUT_MS", "-1"),  # every connection refused: 503
        ("VOICEAPPOINT_DB_CLIENT_CHECK_INTERVAL_MS", "-5"),  # the same
        ("VOICEAPPOINT_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", "-1"),  # the same
    ],
)
def test_a_setting_that_would_break_every_request_stops_the_command(variable, value):
    assert_one_line_error(
        voiceappoint("migrate", DATABASE_URL=NOWHERE, **{variable: value}), f"bad configuration: {variable}"
    )


def test_the_log_level_is_read_in_any_case(monkeypatch):
    monkeypatch.setenv("VOICEAPPOINT_LOG_LEVEL", "debug")
    assert Settings().log_level == "DEBUG"
