"""The least a booking's client side could cost: the booking's own SQL, replayed by bare psycopg.

    .venv/bin/python bench/booking_floor.py [--bookings 500]

The issue's 0.5 × no-op target leaves a booking about one no-op task's worth of CPU beyond the task
machinery (docs/performance.md). This bench measures how much of that the application's Python could
ever give back without changing what it asks PostgreSQL to do. It is self-contained:

1. A database A (va_bench_floor_<id>, migrated, with the system templates) with `--bookings` booking
   jobs recorded as in the other benches, and B, a copy of A made before any booking runs
   (CREATE DATABASE … TEMPLATE).
2. The jobs run through `intake.run` on A, one after another on one connection, as `bench/booking_profile.py`
   runs them; every statement the driver receives is recorded with its parameters, with each commit.
3. The recording is replayed on B by one bare psycopg connection (as the application role, so row-level
   security, triggers and constraints do the same work): the same statements, the same parameters, the
   same transactions, the same outcome. Twice, from fresh copies: statement by statement, then each
   transaction in one psycopg pipeline (one network round trip per transaction).

For each it prints per booking: this process's CPU (the client: domain code, SQLAlchemy, psycopg, the
kernel's side of the socket) and the PostgreSQL backend's CPU, read from /proc. The application row minus
a replay row is what no rewrite of the client could save while sending the same SQL.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ on the path, not the project root.
sys.path.insert(0, str(REPO_ROOT))

from alembic import command  # noqa: E402
from sqlalchemy import event  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from bench.sql_replay import (  # noqa: E402
    Transaction,
    backend_cpu,
    by_job,
    check_same_outcome,
    connect_as_application,
    copy_database,
    database,
    record,
    replay,
)
from bench.workload import SPREAD_BUSINESSES, record_booking_jobs, run_intake_jobs, seed_system_rows  # noqa: E402
from core.config import get_settings  # noqa: E402
from core.db import make_engine  # noqa: E402
from ops.database import alembic_config, create_database_if_missing, drop_database  # noqa: E402

WARM_UP = 50


@dataclass
class Figures:
    bookings: int
    client_cpu: float
    server_cpu: float
    wall: float
    statements: int
    transactions: int

    def row(self, label: str) -> str:
        n = self.bookings
        return (
            f"{label:<34} {self.client_cpu / n * 1000:7.2f} ms {self.server_cpu / n * 1000:9.2f} ms"
            f" {self.wall / n * 1000:8.2f} ms {self.statements / n:10.1f} {self.transactions / n:8.1f}"
        )


def run_application(database_url: str, job_ids: list[str]) -> tuple[Figures, list[Transaction]]:
    """The jobs through `intake.run`, every one recorded; the figures of those after the warm-up."""
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    factory = sessionmaker(engine, expire_on_commit=False)
    backends: set[int] = set()

    @event.listens_for(engine, "connect")
    def _connected(dbapi_connection, connection_record) -> None:
        backends.add(dbapi_connection.info.backend_pid)

    recording = record(engine)

    try:
        run_intake_jobs(factory, job_ids[:WARM_UP])
        (pid,) = backends
        gc.freeze()  # as the worker processes do after start-up
        server, wall, cpu = backend_cpu(pid), time.perf_counter(), time.process_time()
        run_intake_jobs(factory, job_ids[WARM_UP:])
        figures = Figures(
            bookings=len(job_ids) - WARM_UP,
            client_cpu=time.process_time() - cpu,
            server_cpu=backend_cpu(pid) - server,
            wall=time.perf_counter() - wall,
            statements=0,
            transactions=0,
        )
        if backends != {pid}:
            raise SystemExit("the bookings did not all run on one connection; the server figure is wrong")
    finally:
        engine.dispose()
    transactions = [t for job in by_job(recording, len(job_ids)) for t in job]
    timed = transactions[2 * WARM_UP :]
    figures.statements = sum(len(t.statements) for t in timed)
    figures.transactions = len(timed)
    return figures, transactions


def replay_all(
    database_url: str, warm_up: list[Transaction], timed: list[Transaction], pipelined: bool
) -> Figures:
    """Send the recorded transactions again on one bare connection; the figures of the timed ones."""
    connection = connect_as_application(database_url)
    client_ids: dict[uuid.UUID, uuid.UUID] = {}
    try:
        for transaction in warm_up:
            replay(connection, transaction, pipelined, client_ids)
        pid = connection.info.backend_pid
        server, wall, cpu = backend_cpu(pid), time.perf_counter(), time.process_time()
        for transaction in timed:
            replay(connection, transaction, pipelined, client_ids)
        return Figures(
            bookings=0,
            client_cpu=time.process_time() - cpu,
            server_cpu=backend_cpu(pid) - server,
            wall=time.perf_counter() - wall,
            statements=sum(len(t.statements) for t in timed),
            transactions=len(timed),
        )
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=500, help="timed bookings")
    args = parser.parse_args(argv)
    run_id = uuid.uuid4().hex[:10]
    application_url = database(get_settings().database_url, f"va_bench_floor_{run_id}")
    created: list[str] = [application_url]
    try:
        create_database_if_missing(application_url)
        command.upgrade(alembic_config(application_url), "head")
        seed_system_rows(application_url)
        jobs = record_booking_jobs(application_url, WARM_UP + args.bookings, SPREAD_BUSINESSES)
        for n in (1, 2):
            created.append(copy_database(application_url, f"va_bench_floor_{run_id}_{n}"))
        application, recording = run_application(application_url, jobs)
        warm_up, timed = recording[: 2 * WARM_UP], recording[2 * WARM_UP :]
        one_by_one = replay_all(created[1], warm_up, timed, pipelined=False)
        pipelined = replay_all(created[2], warm_up, timed, pipelined=True)
        check_same_outcome(created)
    finally:
        for url in created:
            drop_database(url)

    timed_bookings = args.bookings
    print(f"{timed_bookings} bookings, per booking:")
    print(f"{'':<34} {'client CPU':>10} {'server CPU':>12} {'wall':>11} {'statements':>10} {'commits':>8}")
    for label, figures in (
        ("application (intake.run)", application),
        ("same SQL, bare psycopg", one_by_one),
        ("same SQL, one pipeline per commit", pipelined),
    ):
        figures.bookings = timed_bookings
        print(figures.row(label))


if __name__ == "__main__":
    main()
