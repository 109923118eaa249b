"""A booking's SQL, recorded from the application and sent again by bare psycopg.

The benches use it to measure what the application's Python costs on top of the SQL it sends: the same
statements, parameters and transactions, replayed with nothing but the driver, do the same work in
PostgreSQL (row-level security, triggers, constraints) and leave the same rows.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from core.config import get_settings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Transaction:
    statements: list[tuple[str, Any]] = field(default_factory=list)
    # The ids of the clients inserted, by statement index: they are drawn by the database (gen_random_uuid),
    # so a replay draws others and must send its own in the statements that follow.
    new_client_ids: dict[int, list[uuid.UUID]] = field(default_factory=dict)
    # The statements whose parameters hold such an id: only those are rewritten (see mark_client_references).
    client_references: set[int] = field(default_factory=set)


NEW_CLIENT = "INSERT INTO clients"


def record(engine: Engine) -> list[Transaction]:
    """From now on, every statement `engine` sends, with its parameters, in its transaction (a new one
    starts at each commit); the list grows as the application runs. The engine must not be shared."""
    recording: list[Transaction] = [Transaction()]

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, connection_record, connection_proxy) -> None:
        # pool_pre_ping's round trip, which the driver sends past SQLAlchemy's statement events.
        recording[-1].statements.append(("SELECT 1", None))

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(conn, cursor, statement, parameters, context, executemany) -> None:
        recording[-1].statements.append((statement, parameters))

    @event.listens_for(engine, "after_cursor_execute")
    def _new_client(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.startswith(NEW_CLIENT):
            # Read ahead and rewind (a client-side cursor), so the application reads the rows as usual.
            transaction = recording[-1]
            transaction.new_client_ids[len(transaction.statements) - 1] = [
                row[0] for row in cursor.fetchall()
            ]
            cursor.scroll(0, mode="absolute")

    @event.listens_for(engine, "commit")
    def _commit(conn) -> None:
        recording.append(Transaction())

    return recording


def by_job(recording: list[Transaction], jobs: int) -> list[list[Transaction]]:
    """The recording of `jobs` booking jobs run one after another, as each job's transactions (its running
    marker, then the booking with its outcome), ready to replay (see `mark_client_references`)."""
    transactions = [t for t in recording if t.statements]
    if len(transactions) != 2 * jobs:
        raise SystemExit(f"expected two transactions per job, recorded {len(transactions)}")
    mark_client_references(transactions)
    return [transactions[2 * i : 2 * i + 2] for i in range(jobs)]


def mark_client_references(recording: list[Transaction]) -> None:
    """Note which statements send a new client's id, before replaying: a replay then rewrites only those
    and spends no time looking through the others' parameters."""
    new_clients = {i for t in recording for ids in t.new_client_ids.values() for i in ids}
    for transaction in recording:
        transaction.client_references = {
            index
            for index, (_, parameters) in enumerate(transaction.statements)
            if _with_ids(parameters, dict.fromkeys(new_clients)) != parameters
        }


def connect_as_application(database_url: str) -> psycopg.Connection:
    """A bare psycopg connection in the application role, as the application's engine makes them."""
    connection = psycopg.connect(conninfo(database_url), options="-c statement_timeout=30000")
    role = get_settings().db_app_role
    if role:
        connection.autocommit = True
        connection.execute(f'SET ROLE "{role}"')
        connection.autocommit = False
    return connection


def replay(
    connection: psycopg.Connection,
    transaction: Transaction,
    pipelined: bool = False,
    client_ids: dict[uuid.UUID, uuid.UUID] | None = None,
) -> None:
    """Send a recorded transaction again and commit it, fetching every result as the application does.

    `client_ids` maps the recorded ids of new clients to the replay's; pass the same dict to the replays
    of one recording where a later booking finds a client an earlier one made."""
    send = _pipelined if pipelined else _one_by_one
    send(connection, transaction, {} if client_ids is None else client_ids)


def _one_by_one(
    connection: psycopg.Connection, transaction: Transaction, ids: dict[uuid.UUID, uuid.UUID]
) -> None:
    with connection.cursor() as cursor:
        for index, (statement, parameters) in enumerate(transaction.statements):
            if index in transaction.client_references:
                parameters = _with_ids(parameters, ids)
            cursor.execute(statement, parameters or None)
            rows = cursor.fetchall() if cursor.description is not None else []
            recorded = transaction.new_client_ids.get(index)
            if recorded:
                ids.update(zip(recorded, (row[0] for row in rows), strict=True))
    connection.commit()


def _pipelined(
    connection: psycopg.Connection, transaction: Transaction, ids: dict[uuid.UUID, uuid.UUID]
) -> None:
    """The transaction in one pipeline: where a statement needs a new client's id, the pipeline is
    synchronised there first (the application could not send it earlier either)."""
    cursors = []
    with connection.pipeline() as pipeline:
        for index, (statement, parameters) in enumerate(transaction.statements):
            cursor = connection.cursor()
            if index in transaction.client_references:
                parameters = _with_ids(parameters, ids)
            cursor.execute(statement, parameters or None)
            cursors.append(cursor)
            recorded = transaction.new_client_ids.get(index)
            if recorded:
                pipeline.sync()
                ids.update(zip(recorded, (row[0] for row in cursor.fetchall()), strict=True))
        connection.commit()
    for cursor in cursors:
        if cursor.description is not None:
            cursor.fetchall()
        cursor.close()


# What the bookings leave behind, to check that a replay did what the application did.
_OUTCOME = (
    "SELECT (SELECT count(*) FROM appointments), (SELECT count(*) FROM appointment_resources WHERE active),"
    " (SELECT count(*) FROM clients), (SELECT count(*) FROM notifications),"
    " (SELECT count(*) FROM intake_jobs WHERE status = 'succeeded'), (SELECT count(*) FROM audit_logs)"
)


def check_same_outcome(database_urls: list[str]) -> None:
    outcomes = []
    for database_url in database_urls:
        with psycopg.connect(conninfo(database_url)) as owner:
            outcomes.append(owner.execute(_OUTCOME).fetchone())
    if len(set(outcomes)) != 1:
        raise SystemExit(f"a replay did not leave what the application left: {outcomes}")


def _with_ids(value: Any, ids: dict[uuid.UUID, uuid.UUID]) -> Any:
    """`value` (parameters, or anything in them) with the recorded client ids replaced by the replay's."""
    if isinstance(value, uuid.UUID):
        return ids.get(value, value)
    if isinstance(value, dict):
        return {key: _with_ids(item, ids) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_with_ids(item, ids) for item in value)
    if isinstance(value, str) and len(value) == 36:
        try:
            return str(ids.get(uuid.UUID(value), value))
        except ValueError:
            return value
    return value


def backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) the PostgreSQL backend `pid` has used; it runs on this host."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def database(base_url: str, name: str) -> str:
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def conninfo(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def copy_database(source_url: str, name: str) -> str:
    """A new database `name` with everything in `source_url` (which must have no open connection)."""
    source = make_url(source_url).database
    with psycopg.connect(conninfo(database(source_url, "postgres")), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    return database(source_url, name)
