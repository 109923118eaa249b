"""Where a booking's time goes without Celery: intake jobs run by `intake.run` in this process.

    .venv/bin/python bench/booking_profile.py [--bookings 1000] [--processes 1]

The run is self-contained: its own database (va_bench_profile_<id>, migrated to head, with the system
templates), dropped at the end. It records `--bookings` booking jobs over 50 salons, as the booking
pipeline bench does (each client with a phone and an email, so each booking queues two confirmations),
then runs them one after another in each of `--processes` processes, each on an engine of its own as a
worker process has, and prints per booking: the SQL statements sent (by kind), the wall
time, this process's CPU time (Python and the driver; PostgreSQL's own CPU is not in it), and with
several processes, the bookings per second of all of them together: the pipeline's ceiling if Celery
cost nothing. The first 50 bookings of each process warm it up and are not counted.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import re
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ on the path, not the project root.
sys.path.insert(0, str(REPO_ROOT))

from alembic import command  # noqa: E402
from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from bench.workload import (  # noqa: E402
    SPREAD_BUSINESSES,
    record_booking_jobs,
    record_change_jobs,
    run_intake_jobs,
    seed_system_rows,
)
from core.config import get_settings  # noqa: E402
from core.db import make_engine  # noqa: E402
from ops.database import alembic_config, create_database_if_missing, drop_database  # noqa: E402

WARM_UP = 50


def _label(statement: str) -> str:
    """'SELECT … FROM clients', 'INSERT INTO appointments', 'SAVEPOINT': what a statement does, in short."""
    verb = statement.split(None, 1)[0].upper()
    table = re.search(r"(?:INSERT INTO|UPDATE|FROM)\s+(\w+)", statement)
    if verb == "WITH":
        return "WITH … (the availability calendar)"
    if verb == "SELECT" and table:
        return f"SELECT … FROM {table.group(1)}"
    return (
        f"{verb} {table.group(1)}"
        if table and verb in ("INSERT", "UPDATE")
        else " ".join(statement.split()[:3])
    )


def run_jobs(database_url: str, job_ids: list[str], changes: bool = False) -> dict[str, dict]:
    """Run the jobs one after another; the figures of those after the warm-up, by kind of job. With
    `changes`, each timed booking is then rescheduled, then cancelled (those jobs recorded untimed)."""
    engine = make_engine(database_url)
    factory = sessionmaker(engine, expire_on_commit=False)
    statements: Counter[str] = Counter()

    @event.listens_for(engine, "before_cursor_execute")
    def _count(conn, cursor, statement, parameters, context, executemany) -> None:
        statements[_label(statement)] += 1

    def timed(ids: list[str]) -> tuple[list[dict], dict]:
        statements.clear()
        began, wall, cpu = time.time(), time.perf_counter(), time.process_time()
        outcomes = run_intake_jobs(factory, ids)
        return outcomes, {
            "jobs": len(ids),
            "began": began,
            "ended": time.time(),
            "wall": time.perf_counter() - wall,
            "cpu": time.process_time() - cpu,
            "statements": dict(statements),
        }

    try:
        run_intake_jobs(factory, job_ids[:WARM_UP])
        gc.freeze()  # as the worker processes do after start-up
        booked, figures = timed(job_ids[WARM_UP:])
        results = {"booking": figures}
        if changes:
            for kind in ("reschedule", "cancel"):
                _, results[kind] = timed(record_change_jobs(database_url, booked, kind))
        return results
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=1000, help="bookings per process")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument(
        "--changes", action="store_true", help="then reschedule and cancel each timed booking, timed too"
    )
    args = parser.parse_args(argv)
    database_url = (
        make_url(get_settings().database_url)
        .set(database=f"va_bench_profile_{uuid.uuid4().hex[:10]}")
        .render_as_string(hide_password=False)
    )
    create_database_if_missing(database_url)
    try:
        command.upgrade(alembic_config(database_url), "head")
        seed_system_rows(database_url)
        # Two days ahead: the salons' 24-hour policy still allows changes.
        jobs = record_booking_jobs(
            database_url, (args.bookings + WARM_UP) * args.processes, SPREAD_BUSINESSES, days_ahead=2
        )
        shares = [jobs[i :: args.processes] for i in range(args.processes)]
        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            results = pool.starmap(run_jobs, [(database_url, share, args.changes) for share in shares])
    finally:
        drop_database(database_url)

    for kind in results[0]:
        for number, by_kind in enumerate(results, 1):
            result = by_kind[kind]
            n = result["jobs"]
            print(
                f"process {number}: {n} {kind} jobs, per job: wall {result['wall'] / n * 1000:.2f} ms, "
                f"CPU {result['cpu'] / n * 1000:.2f} ms, {sum(result['statements'].values()) / n:.1f} statements"
            )
        first = results[0][kind]
        for statement, count in sorted(first["statements"].items(), key=lambda item: -item[1]):
            print(f"  {count / first['jobs']:5.2f} x {statement}")
    if args.processes > 1:
        # From the first timed booking of any process to the last of all (their warm-ups may overlap it).
        bookings = [by_kind["booking"] for by_kind in results]
        elapsed = max(r["ended"] for r in bookings) - min(r["began"] for r in bookings)
        total = sum(result["jobs"] for result in bookings)
        print(f"all {args.processes} processes together: {total / elapsed:.0f} bookings/s")


if __name__ == "__main__":
    main()
