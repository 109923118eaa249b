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

from bench.workload import SPREAD_BUSINESSES, record_booking_jobs, run_booking_jobs, seed_system_rows  # noqa: E402
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


def run_jobs(database_url: str, job_ids: list[str]) -> dict:
    """Run the jobs one after another; the figures of those after the warm-up."""
    engine = make_engine(database_url)
    factory = sessionmaker(engine, expire_on_commit=False)
    statements: Counter[str] = Counter()

    @event.listens_for(engine, "before_cursor_execute")
    def _count(conn, cursor, statement, parameters, context, executemany) -> None:
        statements[_label(statement)] += 1

    try:
        run_booking_jobs(factory, job_ids[:WARM_UP])
        statements.clear()
        gc.freeze()  # as the worker processes do after start-up
        began, wall, cpu = time.time(), time.perf_counter(), time.process_time()
        run_booking_jobs(factory, job_ids[WARM_UP:])
        return {
            "bookings": len(job_ids) - WARM_UP,
            "began": began,
            "ended": time.time(),
            "wall": time.perf_counter() - wall,
            "cpu": time.process_time() - cpu,
            "statements": dict(statements),
        }
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=1000, help="bookings per process")
    parser.add_argument("--processes", type=int, default=1)
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
        jobs = record_booking_jobs(
            database_url, (args.bookings + WARM_UP) * args.processes, SPREAD_BUSINESSES
        )
        shares = [jobs[i :: args.processes] for i in range(args.processes)]
        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            results = pool.starmap(run_jobs, [(database_url, share) for share in shares])
    finally:
        drop_database(database_url)

    for number, result in enumerate(results, 1):
        n = result["bookings"]
        print(
            f"process {number}: {n} bookings, per booking: wall {result['wall'] / n * 1000:.2f} ms, "
            f"CPU {result['cpu'] / n * 1000:.2f} ms, {sum(result['statements'].values()) / n:.1f} statements"
        )
    first = results[0]
    for statement, count in sorted(first["statements"].items(), key=lambda item: -item[1]):
        print(f"  {count / first['bookings']:5.2f} x {statement}")
    if args.processes > 1:
        # From the first timed booking of any process to the last of all (their warm-ups may overlap it).
        elapsed = max(r["ended"] for r in results) - min(r["began"] for r in results)
        total = sum(result["bookings"] for result in results)
        print(f"all {args.processes} processes together: {total / elapsed:.0f} bookings/s")


if __name__ == "__main__":
    main()
