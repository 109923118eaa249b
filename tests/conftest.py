"""The test harness: one fresh PostgreSQL database per run (per xdist worker), migrated with Alembic,
one Redis key prefix per run, and a transaction per test that is rolled back.

Tests that need committed data seen by other connections (threads, worker processes) use
`committed_engine` and make their own tenant, so they never meet another test's rows.

Row-level security is on for every test: every connection acts as the application role
(VOICEAPPOINT_DB_APP_ROLE), like the API and the workers. The code under test runs in UnitOfWork
sessions with their own tenant context; the test's own sessions (factories, assertions) work in system
mode, so that they can set up and check any tenant's rows. tests/integration/test_tenant_isolation.py
shows that the policies really bind the code under test.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from core.config import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, get_settings
from ops.services import delete_keys_with_prefix

RUN_ID = uuid.uuid4().hex[:10]


def _worker_suffix() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def database_url() -> str:
    from alembic import command

    from ops.database import alembic_config, create_database_if_missing, drop_database

    base = make_url(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    url = base.set(database=f"va_test_{RUN_ID}_{_worker_suffix()}").render_as_string(hide_password=False)
    create_database_if_missing(url)
    try:
        command.upgrade(alembic_config(url), "head")
    except BaseException:
        # A revision that fails (a work in progress) must not leave the run's database on the shared server.
        drop_database(url)
        raise
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    yield url
    if previous is None:
        os.environ.pop("DATABASE_URL", None)
    else:
        os.environ["DATABASE_URL"] = previous
    get_settings.cache_clear()
    from core import db as core_db

    core_db.dispose_engine()
    if os.environ.get("VOICEAPPOINT_KEEP_TEST_DB") != "1":
        drop_database(url)


def _redis_prefix() -> str:
    return f"va_test_{RUN_ID}_{_worker_suffix()}:"


def pytest_configure(config: pytest.Config) -> None:
    # Before any test runs: the Celery app reads its settings once, the first time anything touches its
    # configuration (a schedule asking the app for the time zone does), and must read this run's prefix.
    os.environ["VOICEAPPOINT_REDIS_KEY_PREFIX"] = _redis_prefix()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    """A key prefix of this run's own, so parallel runs on the shared Redis never see each other's queues."""
    prefix = _redis_prefix()
    assert os.environ["VOICEAPPOINT_REDIS_KEY_PREFIX"] == prefix
    yield prefix
    delete_keys_with_prefix(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL), prefix)


@pytest.fixture(scope="session")
def engine(database_url):
    from core.db import make_engine

    engine = make_engine(database_url, pool_size=20, max_overflow=20)
    yield engine
    engine.dispose()


_SYSTEM_ON = text("SELECT current_setting('app.system', true), set_config('app.system', 'on', true)")
_SYSTEM_BACK = text("SELECT set_config('app.system', :previous, true)")


class AllTenantsSession(Session):
    """The test's own session in the `db` fixture: its statements and flushes run in system mode.

    It shares one connection, and so one set of settings, with the UnitOfWork sessions of the code
    under test. So system mode is switched on around each of its own statements and flushes only, and
    put back as it was afterwards: a unit of work open at that moment keeps its tenant context. (When a
    statement fails, the rollback of its savepoint puts the setting back.)
    """

    def _system_on(self) -> str:
        return self.connection().execute(_SYSTEM_ON).scalar() or ""

    def _system_back(self, previous: str) -> None:
        self.connection().execute(_SYSTEM_BACK, {"previous": previous})

    def flush(self, objects: Any = None) -> None:
        if not (self.new or self.dirty or self.deleted):
            return super().flush(objects)
        previous = self._system_on()
        super().flush(objects)
        self._system_back(previous)


@event.listens_for(AllTenantsSession, "do_orm_execute")
def _statement_in_system_mode(state: ORMExecuteState) -> Any:
    session = state.session
    assert isinstance(session, AllTenantsSession)
    previous = session._system_on()
    result = state.invoke_statement()
    session._system_back(previous)
    return result


@pytest.fixture
def db(engine):
    """A session inside a transaction that is rolled back after the test.

    Every UnitOfWork opened during the test joins this transaction through savepoints, so a
    `uow.commit()` in the code under test is real for the test and vanishes afterwards.
    """
    from core import db as core_db

    connection = engine.connect()
    outer = connection.begin()
    factory = sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    core_db.configure_session_factory(factory)
    session: Session = AllTenantsSession(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    try:
        yield session
    finally:
        session.close()
        core_db.configure_session_factory(None)
        outer.rollback()
        connection.close()


@pytest.fixture
def committed_engine(database_url):
    """For tests whose data must be visible to other connections: real commits, isolated by tenant.

    The test's own sessions on this engine (setting up, checking) are in system mode. The code under
    test does not use it: its UnitOfWork has the process's engine, exactly as in production.
    """
    from core import db as core_db

    core_db.dispose_engine()
    engine = core_db.make_engine(database_url)
    event.listen(engine, "connect", _system_mode_by_default)
    yield engine
    engine.dispose()
    core_db.dispose_engine()


def _system_mode_by_default(dbapi_connection: Any, connection_record: Any) -> None:
    # A session-level value, outside any transaction so that the pool's rollbacks keep it.
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT set_config('app.system', 'on', false)")
    finally:
        dbapi_connection.autocommit = autocommit
