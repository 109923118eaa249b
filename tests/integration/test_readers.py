"""Read-only units of work (`UnitOfWork(read_only=True)`, the API's GET requests) on the real database:
PostgreSQL refuses their writes, and they keep the connection's prepared statements, which a ROLLBACK
makes psycopg forget."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker

from api.app import create_app
from core.db import UnitOfWork, make_engine, session_factory
from tests.scenarios import committed_salon

# The comment makes the statement findable in pg_prepared_statements.
_MARKED_READ = text("SELECT count(*) FROM tenants /* readers-test */ WHERE id = :id")
_PREPARED = text("SELECT statement FROM pg_prepared_statements")


@pytest.fixture
def one_connection(database_url):
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    yield sessionmaker(engine)
    engine.dispose()


def _prepared_statements(factory) -> list[str]:
    with UnitOfWork(uuid.uuid4(), factory=factory, read_only=True) as uow:
        return list(uow.session.execute(_PREPARED).scalars())


def test_a_reader_cannot_write(one_connection):
    with (
        pytest.raises(RuntimeError) as refused,
        UnitOfWork(uuid.uuid4(), factory=one_connection, read_only=True) as uow,
    ):
        uow.session.execute(text("UPDATE tenants SET name = name"))
    # A bug, not a failover's standby (review): neither a 503 nor a worker's retry.
    assert isinstance(refused.value.__cause__, DBAPIError)
    assert refused.value.__cause__.orig.sqlstate == "25006"  # read_only_sql_transaction


def test_a_writer_on_the_pooled_connection_after_a_reader_can_write(one_connection):
    with UnitOfWork(uuid.uuid4(), factory=one_connection, read_only=True) as uow:
        uow.session.execute(_MARKED_READ, {"id": uuid.uuid4()})
    with UnitOfWork(uuid.uuid4(), factory=one_connection) as uow:
        # Nothing of this tenant to update: the point is that PostgreSQL lets it write at all.
        assert uow.session.execute(text("UPDATE tenants SET name = name")).rowcount == 0


def test_readers_keep_their_prepared_statements_from_one_unit_of_work_to_the_next(one_connection):
    # psycopg prepares a statement on its sixth run on a connection (prepare_threshold 5), if no ROLLBACK
    # came in between.
    for _ in range(6):
        with UnitOfWork(uuid.uuid4(), factory=one_connection, read_only=True) as uow:
            uow.session.execute(_MARKED_READ, {"id": uuid.uuid4()})
    assert any("readers-test" in statement for statement in _prepared_statements(one_connection))


def _availability_is_prepared(client, salon, day) -> bool:
    """Asked six times, one request at a time: the API's pool hands the same connection back to each of them."""
    query = {"service_id": str(salon.haircut.id), "from": day.isoformat(), "to": day.isoformat()}
    for _ in range(6):
        response = client.get("/v1/availability", params=query)
        assert response.status_code == 200, response.text
        assert response.json()["slots"]
    return any("resource_schedules" in statement for statement in _prepared_statements(session_factory()))


def test_the_api_answers_availability_from_a_prepared_statement(committed_engine, redis_prefix):
    salon = committed_salon(committed_engine, with_api_key=True)
    with TestClient(create_app(), headers={"Authorization": f"Bearer {salon.api_key}"}) as client:
        assert _availability_is_prepared(client, salon, (datetime.now(UTC) + timedelta(days=2)).date())


@pytest.mark.parametrize(
    "between", ["ready", "refused key", "not found", "booking accepted", "booking refused"]
)
def test_other_requests_on_the_connection_keep_the_readers_prepared_statements(
    committed_engine, redis_prefix, between
):
    """A ROLLBACK anywhere on the connection makes psycopg forget them all: a load balancer's /ready probe, a
    refused key, a reader's 404, an accepted booking (which read its job after its commit) or a refused one must
    not end with one."""
    salon = committed_salon(committed_engine, with_api_key=True)
    day = (datetime.now(UTC) + timedelta(days=2)).date()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {salon.api_key}"}) as client:
        assert _availability_is_prepared(client, salon, day)
        if between == "ready":
            client.get("/ready")
        elif between == "refused key":
            refused = client.get("/v1/services", headers={"Authorization": "Bearer va_live_nope_nope"})
            assert refused.status_code == 401
        elif between == "not found":
            assert client.get(f"/v1/appointments/{uuid.uuid4()}").status_code == 404
        else:
            body = {
                "service_id": str(salon.haircut.id),
                "start": salon.at(day + timedelta(days=1), "10:00").isoformat(),
                "client": {"first_name": "Ana", "phone": "612 345 678"},
            }
            if between == "booking accepted":
                assert client.post("/v1/bookings", json=body).status_code == 202
            else:  # refused as it is recorded: no such service
                refused = client.post("/v1/bookings", json={**body, "service_id": str(uuid.uuid4())})
                assert refused.status_code == 404, refused.text
        kept = _prepared_statements(session_factory())
    assert any("resource_schedules" in statement for statement in kept), kept
