"""The application's connections to PostgreSQL (core.db), on the real database: the statement of a client
killed in a lock wait ends instead of holding its locks, and a failed statement's error carries no
client's details into the logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from core.config import get_settings
from core.db import UnitOfWork, make_engine
from tests.factories import make_tenant
from tests.scenarios import build_emailing_salon
from workers.base import is_transient


@pytest.fixture
def salon(db):
    return build_emailing_salon(db)


# A process of the application (its engine, from core.db) that waits for an advisory lock forever.
_WAITER = """
import sys
from sqlalchemy import text
from core.db import make_engine
with make_engine(sys.argv[1]).connect() as connection:
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": int(sys.argv[2])})
"""


def test_a_process_killed_while_waiting_for_a_lock_leaves_nothing_running_behind(database_url):
    """A worker killed in a lock wait (hard time limit, OOM, deploy): PostgreSQL would run its statement,
    and keep its transaction's locks, until the wait ended; the application's connections ask it to
    check that the client is still there, so the statement ends within about a second."""
    key = uuid.uuid4().int % 2**62
    owner = create_engine(database_url)

    def waiting() -> list[int]:
        # A connection of its own each time: a transaction sees one snapshot of pg_stat_activity.
        with owner.connect() as connection:
            return connection.scalars(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE 'SELECT pg_advisory_lock%'"
                )
            ).all()

    try:
        with owner.connect() as holder:
            holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            waiter = subprocess.Popen(
                [sys.executable, "-c", _WAITER, database_url, str(key)], cwd=Path(__file__).parents[2]
            )
            try:
                deadline = time.monotonic() + 15
                while not (pids := waiting()):
                    assert time.monotonic() < deadline and waiter.poll() is None, "the waiter never waited"
                    time.sleep(0.05)
            finally:
                os.kill(waiter.pid, signal.SIGKILL)
                waiter.wait()
            deadline = time.monotonic() + 5
            while waiting():
                assert time.monotonic() < deadline, f"backend {pids} still waits for its killed client"
                time.sleep(0.1)
            holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        owner.dispose()


def _wait_in_a_statement(uow, key, slug):
    uow.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _wait_in_a_savepoint(uow, key, slug):
    with uow.session.begin_nested():
        uow.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _wait_in_a_flush(uow, key, slug):
    # The holder has inserted a tenant with this slug and not committed: the unique index makes this wait.
    make_tenant(uow.session, slug=slug)


@pytest.mark.parametrize("waiting", [_wait_in_a_statement, _wait_in_a_savepoint, _wait_in_a_flush])
def test_a_soft_time_limit_in_a_lock_wait_gives_back_a_clean_pool_and_the_locks(
    database_url, caplog, waiting
):
    """The soft time limit's exception arrives in the middle of a lock wait: the connection could not be
    rolled back (a statement is still in progress). The task's exception became an OperationalError ("another
    command is already in progress"), and the pool's reset logged an ERROR. The connection is dropped
    instead, and PostgreSQL ends the waiting transaction, with the locks it held, within about a second."""
    from celery.exceptions import SoftTimeLimitExceeded

    from core.db import make_engine

    key, held_by_waiter = (uuid.uuid4().int % 2**62 for _ in range(2))
    slug = f"soft-limit-{uuid.uuid4().hex[:8]}"
    owner = create_engine(database_url)
    engine = make_engine(database_url)
    factory = sessionmaker(engine)

    def interrupt(signum, frame):
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with owner.connect() as holder, holder.begin():
            holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            make_tenant(Session(bind=holder, join_transaction_mode="create_savepoint"), slug=slug)
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            with (
                caplog.at_level("WARNING"),
                pytest.raises(SoftTimeLimitExceeded),
                UnitOfWork(factory=factory, system=True) as uow,
            ):
                uow.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": held_by_waiter})
                waiting(uow, key, slug)
            assert [record.getMessage() for record in caplog.records if record.levelname == "ERROR"] == []
            deadline = time.monotonic() + 5
            while not holder.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": held_by_waiter}):
                assert time.monotonic() < deadline, "the interrupted transaction still holds its lock"
                time.sleep(0.1)
        with UnitOfWork(factory=factory, system=True) as uow:
            assert uow.session.scalar(text("SELECT 1")) == 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        engine.dispose()
        owner.dispose()


def test_a_failed_statement_does_not_carry_a_clients_details_into_logs(db, salon):
    with pytest.raises(Exception) as failed, UnitOfWork(salon.tenant.id) as uow:
        uow.session.execute(
            text("SELECT 1 / 0 FROM clients WHERE phone = :phone OR email = :email"),
            {"phone": "+34600999888", "email": "secret.client@example.com"},
        )
    message = str(failed.value)
    assert "division by zero" in message
    assert "+34600999888" not in message and "secret.client" not in message


@pytest.fixture
def production(monkeypatch):
    """Production settings for this test (the secrets it requires set), and back after it."""
    from core.config import get_settings

    for name, value in {
        "VOICEAPPOINT_ENV": "production",
        "VOICEAPPOINT_SECRET_KEY": "a-real-secret-for-this-test",
        "VOICEAPPOINT_FLOWER_PASSWORD": "a-real-password-for-this-test",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def member_login(database_url):
    """A login role that is only a member of the application role, as production should use."""
    from sqlalchemy.engine import make_url

    from core.config import get_settings

    login = f"va_login_{uuid.uuid4().hex[:10]}"
    owner = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with owner.connect() as connection:
        connection.execute(text(f'CREATE ROLE "{login}" LOGIN IN ROLE "{get_settings().db_app_role}"'))
    try:
        yield make_url(database_url).set(username=login, password=None).render_as_string(False)
    finally:
        with owner.connect() as connection:
            connection.execute(text(f'DROP ROLE "{login}"'))
        owner.dispose()


def test_in_production_a_login_that_could_leave_the_policies_gets_no_connection(database_url, production):
    # The tests' login is the superuser that owns the tables: `RESET ROLE` would take any SQL run in the
    # application's session past row-level security.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    from core.db import make_engine

    engine = make_engine(database_url)
    try:
        with pytest.raises(OperationalError) as refused, engine.connect():
            pass
    finally:
        engine.dispose()
    login = make_url(database_url).username
    assert f"login '{login}' is a superuser, bypasses RLS, owns the tables" in str(refused.value)
    assert "only a member of 'voiceappoint_app'" in str(refused.value)


@pytest.fixture
def owner_login_without_the_role(database_url):
    """A login that owns a table of the schema and may not `SET ROLE` to the application role: what the tables'
    owner is on PostgreSQL 16 or newer when it created the role itself with CREATEROLE (its automatic
    membership has no SET, and revision 013 then grants nothing)."""
    from sqlalchemy.engine import make_url

    login = f"va_owner_{uuid.uuid4().hex[:10]}"
    superuser = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with superuser.connect() as connection:
        connection.execute(text(f'CREATE ROLE "{login}" LOGIN'))
        connection.execute(text(f'CREATE TABLE "{login}_table" (id int)'))
        connection.execute(text(f'ALTER TABLE "{login}_table" OWNER TO "{login}"'))
    try:
        yield login, make_url(database_url).set(username=login, password=None).render_as_string(False)
    finally:
        with superuser.connect() as connection:
            connection.execute(text(f'DROP TABLE "{login}_table"'))
            connection.execute(text(f'DROP ROLE "{login}"'))
        superuser.dispose()


def test_in_production_an_owner_that_may_not_take_the_role_is_refused_as_documented(
    owner_login_without_the_role, production
):
    # Before: `SET ROLE` failed first (InsufficientPrivilege, a ProgrammingError), so the API answered 500 and
    # a worker dropped the job's message, instead of 503 database_unavailable and a retry saying why.
    from sqlalchemy.exc import OperationalError

    login, url = owner_login_without_the_role
    engine = make_engine(url)
    try:
        with pytest.raises(OperationalError) as refused, engine.connect():
            pass
    finally:
        engine.dispose()
    assert f"login '{login}' owns the tables" in str(refused.value)
    assert is_transient(refused.value)


def test_in_production_a_login_that_is_only_a_member_of_the_application_role_works(
    member_login, production, salon
):
    from sqlalchemy.orm import sessionmaker

    from core.db import make_engine

    engine = make_engine(member_login)
    try:
        with UnitOfWork(system=True, factory=sessionmaker(engine)) as uow:
            acting_as = uow.session.scalar(text("SELECT current_user"))
        with UnitOfWork(uuid.uuid4(), factory=sessionmaker(engine)) as uow:
            seen_by_a_stranger = uow.session.scalar(text("SELECT count(*) FROM clients"))
    finally:
        engine.dispose()
    assert acting_as == "voiceappoint_app"
    assert seen_by_a_stranger == 0  # another tenant's context sees none of the salon's clients


def test_a_burst_of_requests_reuses_the_connections_of_the_one_before(database_url):
    """The API's engine as configured (core.db and the default settings): a second burst as large as the first
    gets the first one's connections back, instead of closing and opening some of them again (each new one a
    connect, the role and zone set again, and no prepared statement)."""
    engine = make_engine(database_url)
    settings = get_settings()
    size = settings.db_pool_size + settings.db_max_overflow  # all the connections it may hold
    arrived = threading.Barrier(size)

    def backend_pid() -> int:
        with engine.connect() as connection:
            arrived.wait(timeout=30)  # every thread holds a connection at once
            return connection.execute(text("SELECT pg_backend_pid()")).scalar()

    try:
        bursts = []
        for _ in range(2):
            with ThreadPoolExecutor(size) as pool:
                bursts.append(set(pool.map(lambda _: backend_pid(), range(size))))
        assert len(bursts[0]) == size
        assert bursts[1] == bursts[0]
    finally:
        engine.dispose()


def test_a_connection_that_refused_a_write_as_read_only_is_not_handed_out_again(database_url):
    # (review) A connection opened to the old primary while it is a standby (the failover's DNS or proxy not
    # yet switched) refuses every write (25006), and passes pool_pre_ping. The workers retry such a write and the
    # API answers 503 "until the pool's connections find the new one" (core.db.refused_as_read_only): unless
    # the pool drops them, nothing ever makes them find it (no pool_recycle), and each retry meets the standby.
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection:
            standby_pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
            connection.exec_driver_sql("SET SESSION default_transaction_read_only = on")
            connection.commit()
        factory = sessionmaker(engine)
        with pytest.raises(Exception) as refused, UnitOfWork(system=True, factory=factory) as uow:
            uow.session.execute(text("CREATE TEMPORARY TABLE refused (id int)"))
        assert "read-only" in str(refused.value)
        assert is_transient(refused.value)  # a worker retries it, on a new connection
        with engine.connect() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != standby_pid
    finally:
        engine.dispose()


def test_the_owner_that_migrated_may_take_the_application_role_on_postgresql_16_and_later():
    """docs/operations.md §5's support SQL runs as the migrating user: `SET LOCAL ROLE voiceappoint_app`. From
    PostgreSQL 16 on, an owner with CREATEROLE (not a superuser, as on managed databases) holds the role it
    created with ADMIN but without SET, and revision 013, which granted the role only to a non-member, left it
    so: "permission denied to set role". (A private server: the shared one is PostgreSQL 15.)"""
    from alembic import command

    from ops.database import alembic_config
    from tests.private_postgres import PrivatePostgres

    with PrivatePostgres() as server:
        superuser = create_engine(server.url_for("postgres", "postgres"), isolation_level="AUTOCOMMIT")
        with superuser.connect() as connection:
            assert int(connection.execute(text("SHOW server_version_num")).scalar_one()) >= 160000
            connection.execute(text("CREATE ROLE va_owner LOGIN CREATEDB CREATEROLE"))
            connection.execute(text("CREATE DATABASE voiceappoint OWNER va_owner"))
        superuser.dispose()
        owner_url = server.url_for("va_owner", "voiceappoint")
        command.upgrade(alembic_config(owner_url), "head")
        owner = create_engine(owner_url)
        with owner.begin() as connection:
            connection.execute(text(f"SET LOCAL ROLE {get_settings().db_app_role}"))
            assert connection.execute(text("SELECT current_user")).scalar_one() == get_settings().db_app_role
        owner.dispose()
