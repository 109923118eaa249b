"""The test harness: one fresh PostgreSQL database per run (per xdist worker), migrated with Alembic,
one Redis key prefix per run, and a transaction per test that is rolled back.

Tests that need committed data seen by other connections (threads, worker processes) use
`committed_uow_factory` and make their own tenant, so they never meet another test's rows.
"""

from __future__ import annotations

import os
import uuid

import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from core.config import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, get_settings

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
    command.upgrade(alembic_config(url), "head")
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
    if not os.environ.get("VOICEAPPOINT_KEEP_TEST_DB"):
        drop_database(url)


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    """A key prefix of this run's own, so parallel runs on the shared Redis never see each other's queues."""
    prefix = f"va_test_{RUN_ID}_{_worker_suffix()}:"
    os.environ["VOICEAPPOINT_REDIS_KEY_PREFIX"] = prefix
    get_settings.cache_clear()
    yield prefix
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def engine(database_url):
    engine = create_engine(database_url, pool_size=20, max_overflow=20)
    yield engine
    engine.dispose()


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
    session: Session = factory()
    try:
        yield session
    finally:
        session.close()
        core_db.configure_session_factory(None)
        outer.rollback()
        connection.close()


@pytest.fixture
def committed_engine(database_url):
    """For tests whose data must be visible to other connections: real commits, isolated by tenant."""
    from core import db as core_db

    core_db.dispose_engine()
    yield core_db.get_engine()
    core_db.dispose_engine()
