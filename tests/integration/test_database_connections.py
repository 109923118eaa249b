"""The application's connections to PostgreSQL (core.db), on the real database: the statement of a client
killed in a lock wait ends instead of holding its locks, and a failed statement's error carries no
client's details into the logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from core.db import UnitOfWork
from tests.scenarios import build_emailing_salon


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


def test_a_failed_statement_does_not_carry_a_clients_details_into_logs(db, salon):
    with pytest.raises(Exception) as failed, UnitOfWork(salon.tenant.id) as uow:
        uow.session.execute(
            text("SELECT 1 / 0 FROM clients WHERE phone = :phone OR email = :email"),
            {"phone": "+34600999888", "email": "secret.client@example.com"},
        )
    message = str(failed.value)
    assert "division by zero" in message
    assert "+34600999888" not in message and "secret.client" not in message
